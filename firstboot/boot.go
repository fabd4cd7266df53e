package firstboot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf16"

	"github.com/etcdbake/etcdbake/spec"
)

// Boot assessment states, as `systemd-bless-boot status` names them.
const (
	// BootGood: the booted entry had a counter and has been blessed (the counter is gone).
	BootGood = "good"
	// BootIndeterminate: the booted entry still carries its counter: on trial, not blessed.
	BootIndeterminate = "indeterminate"
	// BootBad: the booted entry was marked bad (0 tries left) after this boot started.
	BootBad = "bad"
	// BootClean: the booted entry has no counter (a fresh image, or blessed before).
	BootClean = "clean"
	// BootUnknown: the booted entry had a counter but none of its names is on the ESP
	// (systemd-bless-boot status fails in this case).
	BootUnknown = "unknown"
)

// loaderGUID is the vendor GUID of systemd-boot's EFI variables.
const loaderGUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"

// Defaults of BootPaths.
const (
	DefaultCmdlinePath = "/proc/cmdline"
	DefaultEFIVarsDir  = "/sys/firmware/efi/efivars"
	DefaultESPDir      = "/efi"
	DefaultNodeDir     = "/node"
)

// BootPaths are where the boot information is read; empty fields take the defaults
// (tests point them at temporary files).
type BootPaths struct {
	Cmdline string // kernel command line (default /proc/cmdline)
	EFIVars string // efivarfs (default /sys/firmware/efi/efivars)
	ESP     string // the ESP's mount point (default /efi, an automount on etcdbake images)
	Node    string // the running slot's node partition (default /node)
}

func (p BootPaths) withDefaults() BootPaths {
	if p.Cmdline == "" {
		p.Cmdline = DefaultCmdlinePath
	}
	if p.EFIVars == "" {
		p.EFIVars = DefaultEFIVarsDir
	}
	if p.ESP == "" {
		p.ESP = DefaultESPDir
	}
	if p.Node == "" {
		p.Node = DefaultNodeDir
	}
	return p
}

// BootEntry is one etcdbake boot loader entry on the ESP,
// loader/entries/etcdbake-<generation>-<slot>[+LEFT[-DONE]].conf.
type BootEntry struct {
	Name       string `json:"name"`
	Generation int    `json:"generation"`
	Slot       string `json:"slot"`
	// Counted: the name carries a boot counter (the entry is on trial, or failed).
	Counted   bool `json:"counted"`
	TriesLeft int  `json:"triesLeft"`
	TriesDone int  `json:"triesDone"`
}

// Bad reports whether systemd-boot gave up on the entry: a counter with no tries left.
// Such entries sort after all others, so the machine boots the next one instead.
func (e BootEntry) Bad() bool { return e.Counted && e.TriesLeft == 0 }

// BootFallback says that the machine fell back by itself: an entry of a newer generation
// than the booted one ran out of tries.
type BootFallback struct {
	Slot       string `json:"slot"`
	Generation int    `json:"generation"`
	Entry      string `json:"entry"`
	// Verify is the last verify-boot result recorded on the data partition for that
	// slot and generation; nil when none was recorded (the slot never got as far as
	// verify-boot, or it was killed before writing).
	Verify *VerifyResult `json:"verify,omitempty"`
}

// BootInfo is what this boot runs and how the boot loader sees it, read live from the
// kernel command line, systemd-boot's EFI variables and the ESP.
type BootInfo struct {
	Slot    string `json:"slot"`    // etcdbake.slot= (a or b)
	Release string `json:"release"` // etcdbake.release=
	Node    string `json:"node"`    // etcdbake.node= (PARTUUID of the slot's node partition)
	// Entry is the booted entry's file name: LoaderBootCountPath's (the name after
	// systemd-boot decremented the counter) when the entry was counted, else
	// LoaderEntrySelected's. Empty when the boot loader did not say.
	Entry string `json:"entry"`
	// Generation of the booted entry, -1 when Entry is not an etcdbake entry.
	Generation int `json:"generation"`
	// State is the boot's assessment: good, indeterminate, bad, clean (or unknown).
	State string `json:"state"`
	// Entries are the etcdbake entries on the ESP in systemd-boot's order: entries with
	// tries left before those without, newest generation first.
	Entries  []BootEntry   `json:"entries"`
	Fallback *BootFallback `json:"fallback,omitempty"`
	// Problems are findings that need a human (malformed names, pinned defaults, a
	// missing ESP on a slotted boot); they never stop the rest of the report.
	Problems []string `json:"problems,omitempty"`
}

// entryRE is the strict form of an etcdbake entry name: a generation as imagebuild writes
// it (%06d: six digits, more only without a leading zero), a slot, an optional counter.
var entryRE = regexp.MustCompile(`^etcdbake-([0-9]{6}|[1-9][0-9]{6,8})-([ab])(?:\+([0-9]{1,9})(?:-([0-9]{1,9}))?)?\.conf$`)

// errNotEtcdbake marks a name that is no etcdbake entry at all (another boot loader entry,
// a temporary file): ignored, not reported.
var errNotEtcdbake = errors.New("not an etcdbake entry")

// ParseBootEntry parses an entry file name. Names that are not etcdbake entries (no
// "etcdbake-" prefix, or not ending in ".conf", such as the ".tmp" files written before a
// rename) return an error wrapping errNotEtcdbake; names that look like etcdbake entries
// but do not follow the format return an error saying what is wrong.
func ParseBootEntry(name string) (BootEntry, error) {
	if !strings.HasPrefix(name, "etcdbake-") || !strings.HasSuffix(name, ".conf") {
		return BootEntry{}, fmt.Errorf("%s: %w", name, errNotEtcdbake)
	}
	m := entryRE.FindStringSubmatch(name)
	if m == nil {
		return BootEntry{}, fmt.Errorf("%s is not a valid etcdbake entry name (want etcdbake-<6-digit generation>-<a|b>[+LEFT[-DONE]].conf)", name)
	}
	e := BootEntry{Name: name, Slot: m[2]}
	e.Generation, _ = strconv.Atoi(m[1]) // the pattern bounds it to 9 digits
	if m[3] != "" {
		e.Counted = true
		e.TriesLeft, _ = strconv.Atoi(m[3])
		if m[4] != "" {
			e.TriesDone, _ = strconv.Atoi(m[4])
		}
	}
	return e, nil
}

// ReadBootInfo reads the boot information. It returns nil (and no error) on machines
// that are not etcdbake A/B images: no etcdbake.slot= on the command line and no
// etcdbake entry on the ESP, or no ESP at all (for example Ignition nodes on Fedora
// CoreOS, or a machine booted without EFI). Problems with
// individual sources are reported in BootInfo.Problems; only an unreadable command line
// is an error.
func ReadBootInfo(paths BootPaths) (*BootInfo, error) {
	p := paths.withDefaults()
	cmdline, err := os.ReadFile(p.Cmdline)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading the kernel command line: %w", err)
	}
	bi := &BootInfo{Generation: -1}
	bi.parseCmdline(string(cmdline))

	entriesDir := filepath.Join(p.ESP, "loader", "entries")
	dirents, err := os.ReadDir(entriesDir)
	switch {
	case err == nil:
	case bi.Slot == "": // not a slotted boot: nothing to miss
	case errors.Is(err, fs.ErrNotExist):
		bi.problemf("%s does not exist: is the ESP mounted at %s? (the image's fstab has an automount for it)", entriesDir, p.ESP)
	default:
		bi.problemf("reading the boot entries: %v", err)
	}
	for _, de := range dirents {
		name := de.Name()
		// systemd-boot ignores these (boot.c, config_load_entries).
		if !de.Type().IsRegular() || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "auto-") {
			continue
		}
		e, err := ParseBootEntry(name)
		if errors.Is(err, errNotEtcdbake) {
			continue
		}
		if err != nil {
			bi.problemf("%s: %v", entriesDir, err)
			continue
		}
		bi.Entries = append(bi.Entries, e)
	}
	sortBootEntries(bi.Entries)
	if bi.Slot == "" && len(bi.Entries) == 0 && len(bi.Problems) == 0 {
		return nil, nil // no trace of etcdbake slots
	}

	bi.readLoaderState(p)
	bi.findFallback()
	return bi, nil
}

// fallback is bi.Fallback, nil-safe.
func (bi *BootInfo) fallback() *BootFallback {
	if bi == nil {
		return nil
	}
	return bi.Fallback
}

func (bi *BootInfo) problemf(format string, args ...any) {
	bi.Problems = append(bi.Problems, fmt.Sprintf(format, args...))
}

var (
	releaseRE  = regexp.MustCompile(`^[0-9a-f]{12}$`)
	partuuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
)

// parseCmdline takes etcdbake.slot/release/node from the kernel command line; the last
// occurrence wins, as for the kernel's own parameters.
func (bi *BootInfo) parseCmdline(cmdline string) {
	for _, w := range strings.Fields(cmdline) {
		k, v, ok := strings.Cut(w, "=")
		if !ok {
			continue
		}
		switch k {
		case spec.CmdlineSlot:
			bi.Slot = v
		case spec.CmdlineRelease:
			bi.Release = v
		case spec.CmdlineNode:
			bi.Node = v
		}
	}
	if bi.Slot != "" && bi.Slot != "a" && bi.Slot != "b" {
		bi.problemf("the kernel command line has etcdbake.slot=%s: want a or b", bi.Slot)
	}
	if bi.Release != "" && !releaseRE.MatchString(bi.Release) {
		bi.problemf("the kernel command line has etcdbake.release=%s: want a 12-digit lower-case hex release id", bi.Release)
	}
	if bi.Node != "" && !partuuidRE.MatchString(strings.ToLower(bi.Node)) {
		bi.problemf("the kernel command line has etcdbake.node=%s: want a partition UUID", bi.Node)
	}
}

// readLoaderState reads the booted entry from systemd-boot's variables and assesses the
// boot as `systemd-bless-boot status` does (bless-boot.c, verb_status).
func (bi *BootInfo) readLoaderState(p BootPaths) {
	if _, err := os.Stat(p.EFIVars); err != nil {
		bi.State = BootUnknown
		bi.problemf("no EFI variables at %s (%v): cannot tell which entry booted", p.EFIVars, err)
		return
	}
	countPath, err := readEFIString(p.EFIVars, "LoaderBootCountPath")
	if err != nil {
		bi.problemf("%v", err)
	}
	selected, err := readEFIString(p.EFIVars, "LoaderEntrySelected")
	if err != nil {
		bi.problemf("%v", err)
	}
	for _, v := range []string{"LoaderEntryDefault", "LoaderEntryOneShot"} {
		if s, err := readEFIString(p.EFIVars, v); err == nil && s != "" {
			bi.problemf("the EFI variable %s is set to %q: it overrides boot counting and the newest-entry order (clear it with bootctl set-default \"\" / set-oneshot \"\")", v, s)
		}
	}

	if countPath == "" {
		bi.State = BootClean
		bi.Entry = selected
		if bi.Entry == "" {
			bi.problemf("systemd-boot did not set LoaderEntrySelected: was this boot started by systemd-boot?")
		}
	} else {
		bi.Entry = bootCountBase(countPath)
		bi.State = blessState(p.ESP, countPath)
	}
	if e, err := ParseBootEntry(bi.Entry); err == nil {
		bi.Generation = e.Generation
		if bi.Slot != "" && e.Slot != bi.Slot {
			bi.problemf("the booted entry %s is for slot %s but the kernel command line says etcdbake.slot=%s", bi.Entry, e.Slot, bi.Slot)
		}
	}
}

// bootCountBase is the file name of LoaderBootCountPath (\loader\entries\NAME).
func bootCountBase(path string) string {
	path = strings.ReplaceAll(path, `\`, "/")
	return path[strings.LastIndex(path, "/")+1:]
}

// blessState is `systemd-bless-boot status` for a boot of a counted entry, whose path
// relative to the ESP is countPath (bless-boot.c, verb_status): the booted name still
// exists = indeterminate; the name without counter = good; the name with 0 tries left =
// bad; none of them = unknown.
func blessState(esp, countPath string) string {
	rel := strings.TrimPrefix(strings.ReplaceAll(countPath, `\`, "/"), "/")
	prefix, done, suffix, ok := splitCounter(rel)
	if !ok || rel == "" || strings.Contains("/"+rel+"/", "/../") {
		return BootUnknown
	}
	exists := func(name string) bool {
		_, err := os.Lstat(filepath.Join(esp, filepath.FromSlash(name)))
		return err == nil
	}
	bad := prefix + "+0" + suffix
	if done > 0 {
		bad = fmt.Sprintf("%s+0-%d%s", prefix, done, suffix)
	}
	switch {
	case exists(rel):
		return BootIndeterminate
	case exists(prefix + suffix):
		return BootGood
	case exists(bad):
		return BootBad
	}
	return BootUnknown
}

// splitCounter splits PREFIX+LEFT[-DONE]SUFFIX at the last "+" as bless-boot does
// (parse_counter): LEFT is digits, "-DONE" optional (then 0).
func splitCounter(name string) (prefix string, done uint64, suffix string, ok bool) {
	i := strings.LastIndex(name, "+")
	if i < 0 || i < strings.LastIndex(name, "/") {
		return "", 0, "", false
	}
	rest := name[i+1:]
	k := digitsPrefix(rest)
	if k == 0 {
		return "", 0, "", false
	}
	rest = rest[k:]
	if strings.HasPrefix(rest, "-") {
		k = digitsPrefix(rest[1:])
		if k == 0 {
			return "", 0, "", false
		}
		d, err := strconv.ParseUint(rest[1:1+k], 10, 64)
		if err != nil {
			return "", 0, "", false
		}
		done, rest = d, rest[1+k:]
	}
	return name[:i], done, rest, true
}

func digitsPrefix(s string) int {
	k := 0
	for k < len(s) && s[k] >= '0' && s[k] <= '9' {
		k++
	}
	return k
}

// findFallback sets Fallback when a newer generation than the booted one ran out of
// tries: systemd-boot skipped it and booted this entry instead.
func (bi *BootInfo) findFallback() {
	if bi.Generation < 0 {
		return
	}
	for _, e := range bi.Entries { // newest first among the bad ones, which sort last
		if e.Bad() && e.Generation > bi.Generation && (bi.Fallback == nil || e.Generation > bi.Fallback.Generation) {
			bi.Fallback = &BootFallback{Slot: e.Slot, Generation: e.Generation, Entry: e.Name}
		}
	}
}

// sortBootEntries orders entries as systemd-boot 252 does for etcdbake names
// (config_entry_compare): entries without tries left last, then by name descending,
// i.e. newest generation first, then slot b before a; for the same name more tries left
// first.
func sortBootEntries(es []BootEntry) {
	sort.SliceStable(es, func(i, j int) bool {
		a, b := es[i], es[j]
		if a.Bad() != b.Bad() {
			return !a.Bad()
		}
		if a.Generation != b.Generation {
			return a.Generation > b.Generation
		}
		if a.Slot != b.Slot {
			return a.Slot > b.Slot
		}
		if a.TriesLeft != b.TriesLeft {
			return a.TriesLeft > b.TriesLeft
		}
		return a.TriesDone < b.TriesDone
	})
}

// readEFIString reads a systemd-boot string variable from efivarfs: 4 bytes of
// attributes, then UTF-16LE, usually NUL-terminated. A missing variable is "".
func readEFIString(dir, name string) (string, error) {
	path := filepath.Join(dir, name+"-"+loaderGUID)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading the EFI variable %s: %w", name, err)
	}
	s, err := decodeEFIString(b)
	if err != nil {
		return "", fmt.Errorf("the EFI variable %s (%s): %w", name, path, err)
	}
	return s, nil
}

// decodeEFIString decodes an efivarfs file holding a string: 4 bytes of attributes, then
// UTF-16LE up to the first NUL.
func decodeEFIString(b []byte) (string, error) {
	if len(b) < 4 {
		return "", fmt.Errorf("%d bytes: shorter than the 4-byte attributes", len(b))
	}
	b = b[4:]
	if len(b)%2 != 0 {
		return "", fmt.Errorf("odd length %d: not UTF-16", len(b))
	}
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u)), nil
}
