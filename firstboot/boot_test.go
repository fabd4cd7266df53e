package firstboot

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unicode/utf16"

	"github.com/etcdbake/etcdbake/spec"
)

func TestParseBootEntry(t *testing.T) {
	for _, tc := range []struct {
		name    string
		want    BootEntry // Name is filled in from name
		ignored bool      // not an etcdbake entry at all
		err     string    // a malformed etcdbake name: the error contains this
	}{
		{name: "etcdbake-000000-a.conf", want: BootEntry{Generation: 0, Slot: "a"}},
		{name: "etcdbake-000001-b+1.conf", want: BootEntry{Generation: 1, Slot: "b", Counted: true, TriesLeft: 1}},
		{name: "etcdbake-000001-b+0-1.conf", want: BootEntry{Generation: 1, Slot: "b", Counted: true, TriesLeft: 0, TriesDone: 1}},
		{name: "etcdbake-000042-a+2-1.conf", want: BootEntry{Generation: 42, Slot: "a", Counted: true, TriesLeft: 2, TriesDone: 1}},
		{name: "etcdbake-000007-b+0.conf", want: BootEntry{Generation: 7, Slot: "b", Counted: true}},
		{name: "etcdbake-1234567-a.conf", want: BootEntry{Generation: 1234567, Slot: "a"}},
		{name: "debian.conf", ignored: true},
		{name: "auto-windows.conf", ignored: true},
		{name: "etcdbake-000001-b+1.tmp", ignored: true},
		{name: "etcdbake-000001-b+1.conf.tmp", ignored: true},
		{name: "etcdbake-000001-b.conf~", ignored: true},
		{name: "etcd-000001-b.conf", ignored: true},
		{name: "etcdbake-1-b.conf", err: "not a valid etcdbake entry name"},
		{name: "etcdbake-0000001-b.conf", err: "not a valid"}, // 7 digits with a leading zero: not %06d
		{name: "etcdbake-000001-c.conf", err: "not a valid"},
		{name: "etcdbake-000001-B.conf", err: "not a valid"},
		{name: "etcdbake-000001-b+.conf", err: "not a valid"},
		{name: "etcdbake-000001-b+x.conf", err: "not a valid"},
		{name: "etcdbake-000001-b+1-.conf", err: "not a valid"},
		{name: "etcdbake-000001-b+-1.conf", err: "not a valid"},
		{name: "etcdbake-000001-b+1-2-3.conf", err: "not a valid"},
		{name: "etcdbake-000001-b+1+2.conf", err: "not a valid"},
		{name: "etcdbake-000001-ab.conf", err: "not a valid"},
		{name: "etcdbake-000001-b+9999999999.conf", err: "not a valid"},
		{name: "etcdbake-abcdef-b.conf", err: "not a valid"},
		{name: "etcdbake-000001-b.conf.conf", err: "not a valid"},
		{name: "etcdbake-000001-b .conf", err: "not a valid"},
		{name: "etcdbake-node1.conf", err: "not a valid"}, // today's single-slot name
	} {
		got, err := ParseBootEntry(tc.name)
		switch {
		case tc.ignored:
			if !errors.Is(err, errNotEtcdbake) {
				t.Errorf("%s: want ignored (errNotEtcdbake), got %+v, %v", tc.name, got, err)
			}
		case tc.err != "":
			if err == nil || errors.Is(err, errNotEtcdbake) || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), tc.name) {
				t.Errorf("%s: want an error containing %q and the name, got %+v, %v", tc.name, tc.err, got, err)
			}
		default:
			tc.want.Name = tc.name
			if err != nil || got != tc.want {
				t.Errorf("%s: got %+v, %v; want %+v", tc.name, got, err, tc.want)
			}
		}
	}
	if e, _ := ParseBootEntry("etcdbake-000001-b+0-1.conf"); !e.Bad() {
		t.Error("+0-1 is not bad")
	}
	for _, n := range []string{"etcdbake-000001-b+1.conf", "etcdbake-000001-b.conf", "etcdbake-000001-b+2-1.conf"} {
		if e, _ := ParseBootEntry(n); e.Bad() {
			t.Errorf("%s is bad", n)
		}
	}
}

// encodeEFI writes an efivarfs string the way the kernel presents systemd-boot's
// variables: 4 bytes of attributes (little-endian), UTF-16LE, a NUL.
func encodeEFI(s string) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 0x6) // BOOTSERVICE_ACCESS|RUNTIME_ACCESS
	for _, c := range utf16.Encode([]rune(s)) {
		b = binary.LittleEndian.AppendUint16(b, c)
	}
	return append(b, 0, 0)
}

func TestDecodeEFIString(t *testing.T) {
	// The bytes of `\loader\entries\x+0-1.conf`, written out by hand.
	raw := []byte{6, 0, 0, 0}
	for _, c := range `\loader\entries\x+0-1.conf` {
		raw = append(raw, byte(c), 0)
	}
	raw = append(raw, 0, 0)
	if got, err := decodeEFIString(raw); err != nil || got != `\loader\entries\x+0-1.conf` {
		t.Fatalf("got %q, %v", got, err)
	}
	if got, err := decodeEFIString(raw[:len(raw)-2]); err != nil || got != `\loader\entries\x+0-1.conf` {
		t.Fatalf("without the NUL: got %q, %v", got, err)
	}
	if got, err := decodeEFIString(encodeEFI("etcdbake-ü.conf")); err != nil || got != "etcdbake-ü.conf" {
		t.Fatalf("non-ASCII: got %q, %v", got, err)
	}
	if _, err := decodeEFIString(raw[:len(raw)-1]); err == nil {
		t.Fatal("odd length accepted")
	}
	if _, err := decodeEFIString([]byte{6, 0}); err == nil {
		t.Fatal("2 bytes accepted")
	}
}

// fakeBoot is a machine's boot state in a temp dir: a kernel command line, systemd-boot's
// EFI variables (name -> string; LoaderBootCountPath only when the entry was counted)
// and the ESP's loader/entries.
type fakeBoot struct {
	cmdline string
	vars    map[string]string
	entries []string
	noESP   bool
	noVars  bool
}

func (fb fakeBoot) write(t *testing.T) BootPaths {
	t.Helper()
	dir := t.TempDir()
	p := BootPaths{Cmdline: filepath.Join(dir, "cmdline"), EFIVars: filepath.Join(dir, "efivars"), ESP: filepath.Join(dir, "efi")}
	if err := os.WriteFile(p.Cmdline, []byte(fb.cmdline+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if !fb.noVars {
		os.MkdirAll(p.EFIVars, 0o755)
		// Another vendor's variable with the same name must not be read.
		os.WriteFile(filepath.Join(p.EFIVars, "LoaderEntrySelected-00000000-0000-0000-0000-000000000000"), encodeEFI("wrong.conf"), 0o644)
		for k, v := range fb.vars {
			if err := os.WriteFile(filepath.Join(p.EFIVars, k+"-"+loaderGUID), encodeEFI(v), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	os.MkdirAll(p.ESP, 0o755) // the automount point exists even without an ESP
	if !fb.noESP {
		ed := filepath.Join(p.ESP, "loader", "entries")
		os.MkdirAll(ed, 0o755)
		for _, e := range fb.entries {
			if err := os.WriteFile(filepath.Join(ed, e), []byte("title etcdbake\nlinux /etcdbake/a/linux\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return p
}

const (
	testRelease = "0123456789ab"
	testNode    = "6f1c2a4e-9b7d-4c3e-8a21-5d0e7f9b3c11"
)

func cmdline(slot string) string {
	return "BOOT_IMAGE=/etcdbake/" + slot + "/linux root=PARTUUID=11111111-2222-3333-4444-555555555555 ro etcdbake.slot=" + slot + " etcdbake.release=" + testRelease + " etcdbake.node=" + testNode + " panic=30"
}

func countPath(name string) string { return `\loader\entries\` + name }

func TestReadBootInfo(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fb       fakeBoot
		nilInfo  bool
		slot     string
		entry    string
		gen      int
		state    string
		entries  []string // names in the expected order
		fallback *BootFallback
		problems []string // substrings, one per expected problem
	}{
		{
			name: "fresh image: uncounted entry",
			fb:   fakeBoot{cmdline: cmdline("a"), vars: map[string]string{"LoaderEntrySelected": "etcdbake-000000-a.conf"}, entries: []string{"etcdbake-000000-a.conf"}},
			slot: "a", entry: "etcdbake-000000-a.conf", gen: 0, state: BootClean,
			entries: []string{"etcdbake-000000-a.conf"},
		},
		{
			name: "on trial: sd-boot renamed +1 to +0-1 and booted it",
			fb: fakeBoot{cmdline: cmdline("b"), vars: map[string]string{"LoaderEntrySelected": "etcdbake-000001-b+1.conf", "LoaderBootCountPath": countPath("etcdbake-000001-b+0-1.conf")},
				entries: []string{"etcdbake-000000-a.conf", "etcdbake-000001-b+0-1.conf"}},
			slot: "b", entry: "etcdbake-000001-b+0-1.conf", gen: 1, state: BootIndeterminate,
			entries: []string{"etcdbake-000000-a.conf", "etcdbake-000001-b+0-1.conf"},
		},
		{
			name: "blessed: bless-boot dropped the counter",
			fb: fakeBoot{cmdline: cmdline("b"), vars: map[string]string{"LoaderEntrySelected": "etcdbake-000001-b+1.conf", "LoaderBootCountPath": countPath("etcdbake-000001-b+0-1.conf")},
				entries: []string{"etcdbake-000000-a.conf", "etcdbake-000001-b.conf"}},
			slot: "b", entry: "etcdbake-000001-b+0-1.conf", gen: 1, state: BootGood,
			entries: []string{"etcdbake-000001-b.conf", "etcdbake-000000-a.conf"},
		},
		{
			name: "bad: bless-boot bad set the tries left to 0 (an entry with 2 tries)",
			fb: fakeBoot{cmdline: cmdline("b"), vars: map[string]string{"LoaderEntrySelected": "etcdbake-000001-b+2.conf", "LoaderBootCountPath": countPath("etcdbake-000001-b+1-1.conf")},
				entries: []string{"etcdbake-000000-a.conf", "etcdbake-000001-b+0-1.conf"}},
			slot: "b", entry: "etcdbake-000001-b+1-1.conf", gen: 1, state: BootBad,
			entries: []string{"etcdbake-000000-a.conf", "etcdbake-000001-b+0-1.conf"},
		},
		{
			name: "bad without a done counter: +3-0 booted, marked +0",
			fb: fakeBoot{cmdline: cmdline("b"), vars: map[string]string{"LoaderBootCountPath": countPath("etcdbake-000001-b+3-0.conf")},
				entries: []string{"etcdbake-000001-b+0.conf"}},
			slot: "b", entry: "etcdbake-000001-b+3-0.conf", gen: 1, state: BootBad,
			entries: []string{"etcdbake-000001-b+0.conf"},
		},
		{
			name: "fallback: b ran out of tries, a booted by itself",
			fb: fakeBoot{cmdline: cmdline("a"), vars: map[string]string{"LoaderEntrySelected": "etcdbake-000000-a.conf"},
				entries: []string{"etcdbake-000001-b+0-1.conf", "etcdbake-000000-a.conf", "etcdbake-000002-b.tmp", ".etcdbake-000003-b.conf", "debian.conf", "auto-efi-shell.conf"}},
			slot: "a", entry: "etcdbake-000000-a.conf", gen: 0, state: BootClean,
			entries:  []string{"etcdbake-000000-a.conf", "etcdbake-000001-b+0-1.conf"},
			fallback: &BootFallback{Slot: "b", Generation: 1, Entry: "etcdbake-000001-b+0-1.conf"},
		},
		{
			name: "fallback after a later rollout: the newest bad generation is named",
			fb: fakeBoot{cmdline: cmdline("b"), vars: map[string]string{"LoaderEntrySelected": "etcdbake-000004-b.conf"},
				entries: []string{"etcdbake-000004-b.conf", "etcdbake-000005-a+0-1.conf", "etcdbake-000003-a+0-1.conf", "etcdbake-000006-a+0-2.conf"}},
			slot: "b", entry: "etcdbake-000004-b.conf", gen: 4, state: BootClean,
			entries:  []string{"etcdbake-000004-b.conf", "etcdbake-000006-a+0-2.conf", "etcdbake-000005-a+0-1.conf", "etcdbake-000003-a+0-1.conf"},
			fallback: &BootFallback{Slot: "a", Generation: 6, Entry: "etcdbake-000006-a+0-2.conf"},
		},
		{
			name: "an older bad entry is no fallback",
			fb: fakeBoot{cmdline: cmdline("b"), vars: map[string]string{"LoaderEntrySelected": "etcdbake-000002-b.conf"},
				entries: []string{"etcdbake-000002-b.conf", "etcdbake-000001-a+0-1.conf"}},
			slot: "b", entry: "etcdbake-000002-b.conf", gen: 2, state: BootClean,
			entries: []string{"etcdbake-000002-b.conf", "etcdbake-000001-a+0-1.conf"},
		},
		{
			name: "sd-boot order: untried before tried, newest first, bad last",
			fb: fakeBoot{cmdline: cmdline("a"), vars: map[string]string{"LoaderEntrySelected": "etcdbake-000010-a.conf"},
				entries: []string{"etcdbake-000009-b.conf", "etcdbake-000010-a.conf", "etcdbake-000011-b+0-1.conf", "etcdbake-000012-b+1.conf", "etcdbake-000012-a+2-1.conf"}},
			slot: "a", entry: "etcdbake-000010-a.conf", gen: 10, state: BootClean,
			entries:  []string{"etcdbake-000012-b+1.conf", "etcdbake-000012-a+2-1.conf", "etcdbake-000010-a.conf", "etcdbake-000009-b.conf", "etcdbake-000011-b+0-1.conf"},
			fallback: &BootFallback{Slot: "b", Generation: 11, Entry: "etcdbake-000011-b+0-1.conf"},
		},
		{
			name: "counted entry gone from the ESP: unknown",
			fb: fakeBoot{cmdline: cmdline("b"), vars: map[string]string{"LoaderEntrySelected": "etcdbake-000001-b+1.conf", "LoaderBootCountPath": countPath("etcdbake-000001-b+0-1.conf")},
				entries: []string{"etcdbake-000000-a.conf"}},
			slot: "b", entry: "etcdbake-000001-b+0-1.conf", gen: 1, state: BootUnknown,
			entries: []string{"etcdbake-000000-a.conf"},
		},
		{
			name: "malformed names, a pinned default, a slot mismatch and a bad release are reported",
			fb: fakeBoot{cmdline: "etcdbake.slot=a etcdbake.release=XYZ etcdbake.node=" + testNode, vars: map[string]string{"LoaderEntrySelected": "etcdbake-000001-b.conf", "LoaderEntryDefault": "etcdbake-000001-b.conf"},
				entries: []string{"etcdbake-000001-b.conf", "etcdbake-1-b.conf", "etcdbake-000002-c+1.conf"}},
			slot: "a", entry: "etcdbake-000001-b.conf", gen: 1, state: BootClean,
			entries: []string{"etcdbake-000001-b.conf"},
			problems: []string{"etcdbake.release=XYZ", "etcdbake-000002-c+1.conf is not a valid", "etcdbake-1-b.conf is not a valid",
				`LoaderEntryDefault is set to "etcdbake-000001-b.conf"`, "is for slot b but the kernel command line says etcdbake.slot=a"},
		},
		{
			name:    "no slots (Fedora CoreOS): no ESP entries, no etcdbake.slot",
			fb:      fakeBoot{cmdline: "BOOT_IMAGE=(hd0,gpt3)/ostree/fedora-coreos/vmlinuz ignition.platform.id=qemu", vars: map[string]string{"LoaderEntrySelected": "ostree-1.conf"}, noESP: true},
			nilInfo: true,
		},
		{
			name:    "no slots: another OS's systemd-boot entries only",
			fb:      fakeBoot{cmdline: "root=/dev/sda2", vars: map[string]string{"LoaderEntrySelected": "arch.conf"}, entries: []string{"arch.conf", "arch-fallback.conf"}},
			nilInfo: true,
		},
		{
			name:    "no slots, no EFI at all (BIOS boot)",
			fb:      fakeBoot{cmdline: "root=/dev/vda1", noESP: true, noVars: true},
			nilInfo: true,
		},
		{
			name: "slotted boot without the ESP mounted",
			fb:   fakeBoot{cmdline: cmdline("a"), vars: map[string]string{"LoaderEntrySelected": "etcdbake-000000-a.conf"}, noESP: true},
			slot: "a", entry: "etcdbake-000000-a.conf", gen: 0, state: BootClean,
			problems: []string{"is the ESP mounted"},
		},
		{
			name: "slotted boot without efivars",
			fb:   fakeBoot{cmdline: cmdline("a"), entries: []string{"etcdbake-000000-a.conf"}, noVars: true},
			slot: "a", gen: -1, state: BootUnknown,
			entries:  []string{"etcdbake-000000-a.conf"},
			problems: []string{"no EFI variables"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bi, err := ReadBootInfo(tc.fb.write(t))
			if err != nil {
				t.Fatal(err)
			}
			if tc.nilInfo {
				if bi != nil {
					t.Fatalf("want no boot info, got %+v", bi)
				}
				return
			}
			if bi == nil {
				t.Fatal("no boot info")
			}
			if bi.Slot != tc.slot || bi.Entry != tc.entry || bi.Generation != tc.gen || bi.State != tc.state {
				t.Errorf("slot %q entry %q generation %d state %q; want %q %q %d %q", bi.Slot, bi.Entry, bi.Generation, bi.State, tc.slot, tc.entry, tc.gen, tc.state)
			}
			if strings.HasPrefix(tc.fb.cmdline, "BOOT_IMAGE=/etcdbake/") && (bi.Release != testRelease || bi.Node != testNode) {
				t.Errorf("release %q node %q", bi.Release, bi.Node)
			}
			var names []string
			for _, e := range bi.Entries {
				names = append(names, e.Name)
			}
			if !reflect.DeepEqual(names, tc.entries) {
				t.Errorf("entries %q, want %q", names, tc.entries)
			}
			if !reflect.DeepEqual(bi.Fallback, tc.fallback) {
				t.Errorf("fallback %+v, want %+v", bi.Fallback, tc.fallback)
			}
			if len(bi.Problems) != len(tc.problems) {
				t.Errorf("problems %q, want %d matching %q", bi.Problems, len(tc.problems), tc.problems)
			}
			for _, want := range tc.problems {
				found := false
				for _, p := range bi.Problems {
					found = found || strings.Contains(p, want)
				}
				if !found {
					t.Errorf("no problem mentions %q: %q", want, bi.Problems)
				}
			}
		})
	}
}

// TestReadStatusBootInfo: status carries the boot info read live, and after a fallback
// the verify-boot result recorded for the failed slot and generation, not another one.
func TestReadStatusBootInfo(t *testing.T) {
	dir := t.TempDir()
	a := &Agent{Cfg: &spec.NodeConfig{Cluster: "c", Name: "m1", StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run")}}
	a.BootPaths = fakeBoot{cmdline: cmdline("a"), vars: map[string]string{"LoaderEntrySelected": "etcdbake-000000-a.conf"},
		entries: []string{"etcdbake-000000-a.conf", "etcdbake-000002-b+0-1.conf"}}.write(t)

	st, err := a.ReadStatus()
	if err != nil {
		t.Fatal(err)
	}
	if st.Boot == nil || st.Boot.Fallback == nil || st.Boot.Fallback.Generation != 2 || st.Boot.Fallback.Verify != nil {
		t.Fatalf("boot %+v", st.Boot)
	}
	// A record of another generation of slot b is not this failure's reason.
	if err := writeJSON(a.VerifyRecordPath(), VerifyResult{Result: VerifyFailed, Slot: "b", Generation: 1, Message: "older"}, 0o644); err != nil {
		t.Fatal(err)
	}
	if st, _ := a.ReadStatus(); st.Boot.Fallback.Verify != nil {
		t.Fatalf("the record of generation 1 was attached to generation 2's fallback: %+v", st.Boot.Fallback.Verify)
	}
	if err := writeJSON(a.VerifyRecordPath(), VerifyResult{Result: VerifyFailed, Slot: "b", Generation: 2, Message: "the reason"}, 0o644); err != nil {
		t.Fatal(err)
	}
	if st, _ := a.ReadStatus(); st.Boot.Fallback.Verify == nil || st.Boot.Fallback.Verify.Message != "the reason" {
		t.Fatalf("fallback %+v", st.Boot.Fallback)
	}
	// Boot info is read live, never recorded: a status file that holds one (written by
	// a status --json > file mistake, say) loses it on the next update.
	if err := writeJSON(a.StatusPath(), Status{Node: "m1", Boot: &BootInfo{Slot: "b"}}, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.update(func(s *Status) { s.Verify = &VerifyResult{Result: VerifyGood} }); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(a.StatusPath())
	if strings.Contains(string(b), `"boot"`) || !strings.Contains(string(b), `"verify"`) {
		t.Fatalf("%s:\n%s", a.StatusPath(), b)
	}
}
