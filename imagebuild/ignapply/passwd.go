package ignapply

import (
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"

	"github.com/coreos/ignition/v2/config/v3_4/types"

	"github.com/etcdbake/etcdbake/imagebuild/fstree"
)

// ---- passwd --------------------------------------------------------------------------

// ignDB is one of etc/passwd, etc/shadow, etc/group, etc/gshadow.
type ignDB struct {
	path   string // resolved tree path
	exists bool
	lines  []string
	dirty  bool
}

func (a *ignApplier) loadDB(name string) (*ignDB, error) {
	p, err := a.t.Resolve(name, true)
	if err != nil {
		return nil, err
	}
	db := &ignDB{path: p}
	e, ok := a.t.Lookup(p)
	if !ok {
		return db, nil
	}
	if !e.IsRegular() {
		return nil, fmt.Errorf("/%s is not a regular file", name)
	}
	b, err := a.content(e)
	if err != nil {
		return nil, err
	}
	db.exists = true
	if s := strings.TrimSuffix(string(b), "\n"); s != "" {
		db.lines = strings.Split(s, "\n")
	}
	return db, nil
}

func (db *ignDB) find(name string) int {
	if db == nil {
		return -1
	}
	for i, l := range db.lines {
		if n, _, ok := strings.Cut(l, ":"); ok && n == name {
			return i
		}
	}
	return -1
}

func (db *ignDB) fields(i int, n int) []string {
	f := strings.Split(db.lines[i], ":")
	for len(f) < n {
		f = append(f, "")
	}
	return f
}

func (db *ignDB) set(i int, f []string) {
	db.lines[i] = strings.Join(f, ":")
	db.dirty = true
}

func (db *ignDB) add(f ...string) {
	db.lines = append(db.lines, strings.Join(f, ":"))
	db.dirty = true
}

func (db *ignDB) del(i int) {
	db.lines = append(db.lines[:i], db.lines[i+1:]...)
	db.dirty = true
}

// ids returns the numeric field of every record, in file order.
func (db *ignDB) ids() []int {
	var out []int
	for _, l := range db.lines {
		f := strings.Split(l, ":")
		if len(f) < 3 {
			continue
		}
		if id, err := strconv.Atoi(f[2]); err == nil && id >= 0 {
			out = append(out, id)
		}
	}
	return out
}

func (db *ignDB) byID(id int) int {
	for i, l := range db.lines {
		f := strings.Split(l, ":")
		if len(f) >= 3 && f[2] == strconv.Itoa(id) {
			return i
		}
	}
	return -1
}

func (a *ignApplier) saveDB(db *ignDB, create bool) error {
	if db == nil || !db.dirty {
		return nil
	}
	data := []byte{}
	if len(db.lines) > 0 {
		data = []byte(strings.Join(db.lines, "\n") + "\n")
	}
	if e, ok := a.t.Lookup(db.path); ok {
		a.setContent(e, data)
		return nil
	}
	if !create {
		return nil
	}
	return a.newFile(db.path, data, "")
}

// ignDefs reads KEY VALUE (login.defs) or KEY=VALUE (default/useradd) settings.
func (a *ignApplier) ignDefs(name string) map[string]string {
	m := map[string]string{}
	e, ok := a.follow(name)
	if !ok || !e.IsRegular() {
		return m
	}
	b, err := a.content(e)
	if err != nil {
		return m
	}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			words := strings.Fields(line)
			if len(words) < 2 {
				continue
			}
			k, v = words[0], words[1]
		}
		m[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"`)
	}
	return m
}

type ignAccounts struct {
	passwd, shadow, group, gshadow *ignDB
	subuid, subgid                 *ignDB
	defs, udefs                    map[string]string
}

func (ac *ignAccounts) num(key string, def int) int {
	if v, ok := ac.defs[key]; ok {
		if n, err := strconv.ParseInt(v, 0, 64); err == nil {
			return int(n)
		}
	}
	return def
}

// findGroup finds a group by name or, for a number, by gid (as useradd -g/-G accept).
func (ac *ignAccounts) findGroup(g string) int {
	if i := ac.group.find(g); i >= 0 {
		return i
	}
	if n, err := strconv.Atoi(g); err == nil {
		return ac.group.byID(n)
	}
	return -1
}

func (a *ignApplier) passwd(p types.Passwd) error {
	if len(p.Users) == 0 && len(p.Groups) == 0 {
		return nil
	}
	ac := &ignAccounts{defs: a.ignDefs("etc/login.defs"), udefs: a.ignDefs("etc/default/useradd")}
	var err error
	for _, x := range []struct {
		db   **ignDB
		name string
	}{{&ac.passwd, "etc/passwd"}, {&ac.shadow, "etc/shadow"}, {&ac.group, "etc/group"}, {&ac.gshadow, "etc/gshadow"}, {&ac.subuid, "etc/subuid"}, {&ac.subgid, "etc/subgid"}} {
		if *x.db, err = a.loadDB(x.name); err != nil {
			return err
		}
	}
	for _, g := range p.Groups {
		if err := a.ensureGroup(ac, g); err != nil {
			return fmt.Errorf("group %q: %w", g.Name, err)
		}
	}
	var homes []func() error
	for _, u := range p.Users {
		mk, err := a.ensureUser(ac, u)
		if err != nil {
			return fmt.Errorf("user %q: %w", u.Name, err)
		}
		if mk != nil {
			homes = append(homes, mk)
		}
	}
	for _, x := range []struct {
		db     *ignDB
		create bool
	}{{ac.passwd, true}, {ac.shadow, false}, {ac.group, true}, {ac.gshadow, false}, {ac.subuid, false}, {ac.subgid, false}} {
		if err := a.saveDB(x.db, x.create); err != nil {
			return err
		}
	}
	for _, mk := range homes {
		if err := mk(); err != nil {
			return err
		}
	}
	for _, u := range p.Users {
		if u.ShouldExist != nil && !*u.ShouldExist || len(u.SSHAuthorizedKeys) == 0 {
			continue
		}
		if err := a.authorizeKeys(ac, u); err != nil {
			return fmt.Errorf("user %q: %w", u.Name, err)
		}
	}
	return nil
}

func (a *ignApplier) ensureGroup(ac *ignAccounts, g types.PasswdGroup) error {
	i := ac.group.find(g.Name)
	if g.ShouldExist != nil && !*g.ShouldExist {
		if i < 0 {
			return nil
		}
		gid := ac.group.fields(i, 4)[2]
		for j := range ac.passwd.lines {
			if f := ac.passwd.fields(j, 7); f[3] == gid {
				return fmt.Errorf("cannot remove the group: it is the primary group of user %s", f[0])
			}
		}
		ac.group.del(i)
		if j := ac.gshadow.find(g.Name); j >= 0 {
			ac.gshadow.del(j)
		}
		return nil
	}
	if i >= 0 {
		f := ac.group.fields(i, 4)
		if g.Gid != nil && strconv.Itoa(*g.Gid) != f[2] {
			return fmt.Errorf("it already exists with gid %s; changing it to %d (groupmod) is not supported offline", f[2], *g.Gid)
		}
		if g.PasswordHash != nil && *g.PasswordHash != "" {
			if j := ac.gshadow.find(g.Name); ac.gshadow.exists && j >= 0 {
				gf := ac.gshadow.fields(j, 4)
				gf[1] = *g.PasswordHash
				ac.gshadow.set(j, gf)
			} else {
				f[1] = *g.PasswordHash
				ac.group.set(i, f)
			}
		}
		return nil
	}
	var gid int
	if g.Gid != nil {
		gid = *g.Gid
		if j := ac.group.byID(gid); j >= 0 {
			return fmt.Errorf("gid %d is already used by group %s", gid, ac.group.fields(j, 4)[0])
		}
	} else {
		var err error
		if gid, err = ac.newGID(g.System != nil && *g.System, nil); err != nil {
			return err
		}
	}
	pw := "!"
	if g.PasswordHash != nil && *g.PasswordHash != "" {
		pw = *g.PasswordHash
	}
	a.addGroup(ac, g.Name, gid, pw)
	return nil
}

func (a *ignApplier) addGroup(ac *ignAccounts, name string, gid int, pw string) {
	if ac.gshadow.exists {
		ac.group.add(name, "x", strconv.Itoa(gid), "")
		ac.gshadow.add(name, pw, "", "")
		return
	}
	if pw == "!" {
		pw = "x"
	}
	ac.group.add(name, pw, strconv.Itoa(gid), "")
}

// addMember adds user to a group's member list (etc/group and etc/gshadow).
func (a *ignApplier) addMember(ac *ignAccounts, gi int, user string) {
	f := ac.group.fields(gi, 4)
	if !ignHasMember(f[3], user) {
		f[3] = ignAddMember(f[3], user)
		ac.group.set(gi, f)
	}
	if j := ac.gshadow.find(f[0]); j >= 0 {
		sf := ac.gshadow.fields(j, 4)
		if !ignHasMember(sf[3], user) {
			sf[3] = ignAddMember(sf[3], user)
			ac.gshadow.set(j, sf)
		}
	}
}

func ignHasMember(list, user string) bool {
	for _, m := range strings.Split(list, ",") {
		if m == user {
			return true
		}
	}
	return false
}

func ignAddMember(list, user string) string {
	if list == "" {
		return user
	}
	return list + "," + user
}

func ignDropMember(list, user string) (string, bool) {
	var keep []string
	found := false
	for _, m := range strings.Split(list, ",") {
		if m == user {
			found = true
		} else if m != "" {
			keep = append(keep, m)
		}
	}
	return strings.Join(keep, ","), found
}

// ensureUser adds (or checks, or deletes) one user; it returns the home creation to do
// once the databases are written.
func (a *ignApplier) ensureUser(ac *ignAccounts, u types.PasswdUser) (func() error, error) {
	i := ac.passwd.find(u.Name)
	if u.ShouldExist != nil && !*u.ShouldExist {
		if i >= 0 {
			a.deleteUser(ac, i)
		}
		return nil, nil
	}
	if i >= 0 {
		return nil, a.existingUser(ac, i, u)
	}

	sys := u.System != nil && *u.System
	var uid int
	if u.UID != nil {
		uid = *u.UID
		if j := ac.passwd.byID(uid); j >= 0 {
			return nil, fmt.Errorf("uid %d is already used by user %s", uid, ac.passwd.fields(j, 7)[0])
		}
	} else {
		var err error
		if uid, err = ac.newUID(sys); err != nil {
			return nil, err
		}
	}
	gid, err := a.primaryGID(ac, u, uid, sys)
	if err != nil {
		return nil, err
	}
	var groups []int
	for _, g := range u.Groups {
		gi := ac.findGroup(string(g))
		if gi < 0 {
			return nil, fmt.Errorf("group %q does not exist", g)
		}
		groups = append(groups, gi)
	}

	home := ""
	if u.HomeDir != nil && *u.HomeDir != "" {
		home = *u.HomeDir
	} else {
		base := "/home"
		if h, ok := ac.udefs["HOME"]; ok && h != "" {
			base = h
		}
		home = path.Join(base, u.Name)
	}
	shell := "/bin/sh"
	if s, ok := ac.udefs["SHELL"]; ok {
		shell = s
	}
	if u.Shell != nil && *u.Shell != "" {
		shell = *u.Shell
	}
	gecos := ""
	if u.Gecos != nil {
		gecos = *u.Gecos
	}
	pw := "*"
	if u.PasswordHash != nil && *u.PasswordHash != "" {
		pw = *u.PasswordHash
	}
	a.addUser(ac, sys, u.Name, pw, strconv.Itoa(uid), strconv.Itoa(gid), gecos, home, shell)
	for _, gi := range groups {
		a.addMember(ac, gi, u.Name)
	}
	// useradd decides before allocating: no uid given (or 0), or one in UID_MIN..UID_MAX.
	if !sys && (u.UID == nil || *u.UID == 0 || *u.UID >= ac.num("UID_MIN", 1000) && *u.UID <= ac.num("UID_MAX", 60000)) {
		if err := ac.addSubIDs(ac.subuid, "SUB_UID", u.Name); err != nil {
			return nil, err
		}
		if err := ac.addSubIDs(ac.subgid, "SUB_GID", u.Name); err != nil {
			return nil, err
		}
	}
	if u.NoCreateHome != nil && *u.NoCreateHome {
		return nil, nil
	}
	homeMode := fs.FileMode(0o777 &^ ac.num("UMASK", 0o22))
	if v, ok := ac.defs["HOME_MODE"]; ok {
		if n, err := strconv.ParseUint(v, 8, 32); err == nil {
			homeMode = fs.FileMode(n & 0o777)
		}
	}
	return func() error { return a.createHome(home, uid, gid, homeMode) }, nil
}

// primaryGID is the new user's primary group as useradd picks it: primaryGroup, else
// (without user groups) GROUP of default/useradd or 100, else a new group of the user's
// name, with gid = uid when that is free.
func (a *ignApplier) primaryGID(ac *ignAccounts, u types.PasswdUser, uid int, sys bool) (int, error) {
	switch {
	case u.PrimaryGroup != nil && *u.PrimaryGroup != "":
		gi := ac.findGroup(*u.PrimaryGroup)
		if gi < 0 {
			return 0, fmt.Errorf("primary group %q does not exist", *u.PrimaryGroup)
		}
		return strconv.Atoi(ac.group.fields(gi, 4)[2])
	case u.NoUserGroup != nil && *u.NoUserGroup || strings.EqualFold(ac.defs["USERGROUPS_ENAB"], "no"):
		if g, ok := ac.udefs["GROUP"]; ok {
			if gi := ac.findGroup(g); gi >= 0 {
				return strconv.Atoi(ac.group.fields(gi, 4)[2])
			}
		}
		return 100, nil
	}
	if ac.group.find(u.Name) >= 0 {
		return 0, fmt.Errorf("group %s exists - if you want to add this user to that group, set primaryGroup", u.Name)
	}
	gid, err := ac.newGID(sys, &uid)
	if err != nil {
		return 0, err
	}
	a.addGroup(ac, u.Name, gid, "!")
	return gid, nil
}

// addUser writes the account's passwd line and, when etc/shadow exists, its shadow line
// as useradd does: the "last change" day, and for accounts that are not system ones
// login.defs' PASS_MIN_DAYS, PASS_MAX_DAYS, PASS_WARN_AGE and default/useradd's INACTIVE.
func (a *ignApplier) addUser(ac *ignAccounts, sys bool, name, pw, uid, gid, gecos, home, shell string) {
	if !ac.shadow.exists {
		ac.passwd.add(name, pw, uid, gid, gecos, home, shell)
		return
	}
	ac.passwd.add(name, "x", uid, gid, gecos, home, shell)
	num := func(m map[string]string, key string) string {
		if v, ok := m[key]; ok {
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				return strconv.Itoa(n)
			}
		}
		return ""
	}
	aging := func(key string) string {
		if sys {
			return ""
		}
		return num(ac.defs, key)
	}
	ac.shadow.add(name, pw, a.lastChange(), aging("PASS_MIN_DAYS"), aging("PASS_MAX_DAYS"), aging("PASS_WARN_AGE"), num(ac.udefs, "INACTIVE"), "", "")
}

// existingUser applies what is supported offline to a user already in the base.
func (a *ignApplier) existingUser(ac *ignAccounts, i int, u types.PasswdUser) error {
	f := ac.passwd.fields(i, 7)
	differs := func(what string, want *string, have string) error {
		if want != nil && *want != "" && *want != have {
			return fmt.Errorf("it already exists in the base with %s %q; changing it to %q (usermod) is not supported offline", what, have, *want)
		}
		return nil
	}
	if u.UID != nil && strconv.Itoa(*u.UID) != f[2] {
		return fmt.Errorf("it already exists in the base with uid %s; changing it to %d (usermod) is not supported offline", f[2], *u.UID)
	}
	if u.PrimaryGroup != nil && *u.PrimaryGroup != "" {
		gi := ac.findGroup(*u.PrimaryGroup)
		if gi < 0 {
			return fmt.Errorf("primary group %q does not exist", *u.PrimaryGroup)
		}
		if gid := ac.group.fields(gi, 4)[2]; gid != f[3] {
			return fmt.Errorf("it already exists in the base with gid %s; changing its primary group to %s (usermod) is not supported offline", f[3], *u.PrimaryGroup)
		}
	}
	for _, err := range []error{differs("gecos", u.Gecos, f[4]), differs("home directory", u.HomeDir, f[5]), differs("shell", u.Shell, f[6])} {
		if err != nil {
			return err
		}
	}
	for _, g := range u.Groups {
		gi := ac.findGroup(string(g))
		if gi < 0 {
			return fmt.Errorf("group %q does not exist", g)
		}
		a.addMember(ac, gi, u.Name)
	}
	if u.PasswordHash != nil {
		pw := *u.PasswordHash
		if pw == "" {
			pw = "*"
		}
		if j := ac.shadow.find(u.Name); ac.shadow.exists && j >= 0 {
			sf := ac.shadow.fields(j, 9)
			sf[1] = pw
			ac.shadow.set(j, sf)
		} else {
			f[1] = pw
			ac.passwd.set(i, f)
		}
	}
	return nil
}

// deleteUser is userdel --remove: the account, its memberships, its own group (when
// nobody else uses it) and its home directory and mail spool.
func (a *ignApplier) deleteUser(ac *ignAccounts, i int) {
	f := ac.passwd.fields(i, 7)
	name, gid, home := f[0], f[3], f[5]
	ac.passwd.del(i)
	if j := ac.shadow.find(name); j >= 0 {
		ac.shadow.del(j)
	}
	for _, db := range []*ignDB{ac.subuid, ac.subgid} {
		for j := db.find(name); j >= 0; j = db.find(name) {
			db.del(j)
		}
	}
	for j := range ac.group.lines {
		gf := ac.group.fields(j, 4)
		if l, ok := ignDropMember(gf[3], name); ok {
			gf[3] = l
			ac.group.set(j, gf)
		}
	}
	if ac.gshadow != nil {
		for j := range ac.gshadow.lines {
			sf := ac.gshadow.fields(j, 4)
			l2, ok2 := ignDropMember(sf[2], name)
			l3, ok3 := ignDropMember(sf[3], name)
			if ok2 || ok3 {
				sf[2], sf[3] = l2, l3
				ac.gshadow.set(j, sf)
			}
		}
	}
	if !strings.EqualFold(ac.defs["USERGROUPS_ENAB"], "no") {
		if gi := ac.group.find(name); gi >= 0 {
			gf := ac.group.fields(gi, 4)
			inUse := gf[2] != gid || gf[3] != ""
			for j := range ac.passwd.lines {
				if ac.passwd.fields(j, 7)[3] == gf[2] {
					inUse = true
				}
			}
			if !inUse {
				ac.group.del(gi)
				if j := ac.gshadow.find(name); j >= 0 {
					ac.gshadow.del(j)
				}
			}
		}
	}
	for _, p := range []string{home, "/var/mail/" + name} {
		if rp, err := a.t.Resolve(p, true); err == nil && rp != "" {
			a.remove(rp)
		}
	}
}

// createHome is useradd --create-home: missing parents 0755 root, the home itself owned
// by the user, /etc/skel copied in. An existing home is left alone.
func (a *ignApplier) createHome(home string, uid, gid int, mode fs.FileMode) error {
	p, err := a.t.Resolve(home, true)
	if err != nil {
		return fmt.Errorf("home %s: %w", home, err)
	}
	if p == "" {
		return nil
	}
	if _, ok := a.t.Lookup(p); ok {
		return nil
	}
	if err := a.mkdirAll(path.Dir(p)); err != nil {
		return fmt.Errorf("home %s: %w", home, err)
	}
	if err := a.t.Put(&fstree.Entry{Path: p, Mode: fs.ModeDir | mode, UID: uid, GID: gid}); err != nil {
		return err
	}
	skel, err := a.t.Resolve("etc/skel", true)
	if err != nil {
		return nil
	}
	if e, ok := a.t.Lookup(skel); !ok || !e.IsDir() {
		return nil
	}
	for _, q := range a.t.Paths() {
		rel, ok := strings.CutPrefix(q, skel+"/")
		if !ok {
			continue
		}
		src, _ := a.t.Lookup(q)
		c := fstree.Entry{Path: p + "/" + rel, Mode: src.Mode, UID: uid, GID: gid, Target: src.Target}
		if src.IsRegular() {
			s := a.canonical(src)
			c.Data, c.Source = s.Data, s.Source
		}
		if err := a.t.Put(&c); err != nil {
			return err
		}
	}
	return nil
}

// authorizeKeys writes the user's keys as Ignition does, as the user: missing
// directories 0700, the file 0600.
func (a *ignApplier) authorizeKeys(ac *ignAccounts, u types.PasswdUser) error {
	i := ac.passwd.find(u.Name)
	if i < 0 {
		return fmt.Errorf("unable to lookup user %q", u.Name)
	}
	f := ac.passwd.fields(i, 7)
	uid, _ := strconv.Atoi(f[2])
	gid, _ := strconv.Atoi(f[3])
	keys := make([]string, len(u.SSHAuthorizedKeys))
	for k, key := range u.SSHAuthorizedKeys {
		keys[k] = string(key)
	}
	ks := strings.Join(keys, "\n")
	if !strings.HasSuffix(ks, "\n") {
		ks += "\n"
	}
	rel := ".ssh/authorized_keys.d/ignition"
	if a.o.LegacyAuthorizedKeys {
		rel = ".ssh/authorized_keys"
	}
	file := path.Join(f[5], rel)
	dir, err := a.t.Resolve(path.Dir(file), true)
	if err != nil {
		return fmt.Errorf("failed to set SSH key: %w", err)
	}
	// Create the missing directories as the user would.
	var missing []string
	for d := dir; d != ""; d = path.Dir(d) {
		if e, ok := a.t.Lookup(d); ok {
			if !e.IsDir() {
				return fmt.Errorf("failed to set SSH key: /%s is not a directory", d)
			}
			if len(missing) > 0 && uid != 0 && (e.UID != uid || e.Mode&0o200 == 0) {
				return fmt.Errorf("failed to set SSH key: /%s does not exist and user %s may not create it in /%s (does the home directory %s exist?)", missing[len(missing)-1], u.Name, d, f[5])
			}
			break
		}
		missing = append(missing, d)
		if path.Dir(d) == "." {
			break
		}
	}
	for k := len(missing) - 1; k >= 0; k-- {
		if err := a.t.Put(&fstree.Entry{Path: missing[k], Mode: fs.ModeDir | 0o700, UID: uid, GID: gid}); err != nil {
			return err
		}
	}
	p := dir + "/" + path.Base(file)
	if e, ok := a.follow(p); ok && e.IsRegular() {
		a.setContent(e, []byte(ks))
		return nil
	}
	p, err = a.t.Resolve(p, true)
	if err != nil {
		return err
	}
	return a.replace(&fstree.Entry{Path: p, Mode: 0o600, UID: uid, GID: gid, Data: []byte(ks)})
}
