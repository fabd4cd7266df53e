package ignapply

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// The numbers useradd and groupadd choose: new user and group IDs, the shadow "last
// change" day, and subordinate id ranges (etc/subuid, etc/subgid).

// ignFindNewID is shadow-utils' find_new_uid/find_new_gid (4.13): ids are the IDs in use
// in file order.
func ignFindNewID(ids []int, lo, hi int, sys bool, preferred *int, preferredLo int) (int, bool) {
	used := map[int]bool{}
	for _, id := range ids {
		used[id] = true
	}
	free := func(id int) bool { return !used[id] && id != 65535 && id != 1<<32-1 }
	if preferred != nil && *preferred >= preferredLo && *preferred <= hi && free(*preferred) {
		return *preferred, true
	}
	lowest, highest := hi, lo
	for _, id := range ids {
		if id <= lowest && id >= lo {
			lowest = id - 1
		}
		if id >= highest && id <= hi {
			highest = id + 1
		}
	}
	if sys {
		if lowest < lo {
			lowest = hi
		}
		for id := lowest; id >= lo; id-- {
			if free(id) {
				return id, true
			}
		}
		if lowest != hi {
			for id := hi; id >= lo; id-- {
				if free(id) {
					return id, true
				}
			}
		}
		return 0, false
	}
	if highest > hi {
		highest = lo
	}
	for id := highest; id <= hi; id++ {
		if free(id) {
			return id, true
		}
	}
	if highest != lo {
		for id := lo; id <= hi; id++ {
			if free(id) {
				return id, true
			}
		}
	}
	return 0, false
}

func (ac *ignAccounts) newGID(sys bool, preferred *int) (int, error) {
	lo, hi, plo := ac.num("GID_MIN", 1000), ac.num("GID_MAX", 60000), 0
	if sys {
		hi = ac.num("SYS_GID_MAX", ac.num("GID_MIN", 1000)-1)
		lo, plo = ac.num("SYS_GID_MIN", 101), 1
	} else {
		plo = lo
	}
	id, ok := ignFindNewID(ac.group.ids(), lo, hi, sys, preferred, plo)
	if !ok {
		return 0, fmt.Errorf("no free group ID in %d..%d", lo, hi)
	}
	return id, nil
}

func (ac *ignAccounts) newUID(sys bool) (int, error) {
	lo, hi := ac.num("UID_MIN", 1000), ac.num("UID_MAX", 60000)
	if sys {
		hi = ac.num("SYS_UID_MAX", ac.num("UID_MIN", 1000)-1)
		lo = ac.num("SYS_UID_MIN", 101)
	}
	id, ok := ignFindNewID(ac.passwd.ids(), lo, hi, sys, nil, lo)
	if !ok {
		return 0, fmt.Errorf("no free user ID in %d..%d", lo, hi)
	}
	return id, nil
}

// lastChange is the shadow "last change" field useradd writes: the day (since the epoch)
// of its clock, Options.Time here; empty for day 0 ("better disable aging than require
// a password change").
func (a *ignApplier) lastChange() string {
	if a.o.Time.IsZero() {
		return ""
	}
	day := a.o.Time.Unix() / 86400
	if day <= 0 {
		return ""
	}
	return strconv.FormatInt(day, 10)
}

// ignSubRange is one line of etc/subuid or etc/subgid (owner:start:count).
type ignSubRange struct {
	line         string
	owner        string
	start, count int64
	ok           bool
}

// addSubIDs is useradd's find_new_sub_uids/sub_uid_add (shadow 4.13) on db (etc/subuid
// or etc/subgid, with prefix SUB_UID or SUB_GID for login.defs): nothing when the tree
// has no such file or the count is 0; else the existing lines are sorted by start, count
// and owner (unparsable ones last), and owner gets the lowest hole of count ids from
// MIN that ends at MAX at the latest, in a line appended at the end.
func (ac *ignAccounts) addSubIDs(db *ignDB, prefix, owner string) error {
	if db == nil || !db.exists {
		return nil
	}
	lo, hi, count := int64(ac.num(prefix+"_MIN", 100000)), int64(ac.num(prefix+"_MAX", 600100000)), int64(ac.num(prefix+"_COUNT", 65536))
	if count == 0 {
		return nil
	}
	if lo > hi || count >= hi || lo+count-1 > hi {
		return fmt.Errorf("invalid configuration in /etc/login.defs: %[1]s_MIN (%d), %[1]s_MAX (%d), %[1]s_COUNT (%d)", prefix, lo, hi, count)
	}
	ranges := make([]ignSubRange, len(db.lines))
	for i, l := range db.lines {
		r := ignSubRange{line: l}
		if f := strings.Split(l, ":"); len(f) == 3 && f[0] != "" {
			s, err1 := strconv.ParseInt(f[1], 10, 64)
			c, err2 := strconv.ParseInt(f[2], 10, 64)
			r.owner, r.start, r.count, r.ok = f[0], s, c, err1 == nil && err2 == nil
		}
		ranges[i] = r
	}
	sort.SliceStable(ranges, func(i, j int) bool {
		a, b := ranges[i], ranges[j]
		switch {
		case a.ok != b.ok:
			return a.ok
		case !a.ok:
			return false
		case a.start != b.start:
			return a.start < b.start
		case a.count != b.count:
			return a.count < b.count
		}
		return a.owner < b.owner
	})
	start, found := lo, false
	for _, r := range ranges {
		if !r.ok {
			continue
		}
		if high := min(r.start, hi+1); high > start && high-start >= count {
			found = true
			break
		}
		start = max(start, r.start+r.count)
		if start > hi {
			break
		}
	}
	if !found && (start > hi || hi-start+1 < count) {
		return fmt.Errorf("no free range of %d subordinate ids for %s in %d..%d (/etc/login.defs %s_MIN, %[5]s_MAX)", count, owner, lo, hi, prefix)
	}
	db.lines = db.lines[:0]
	for _, r := range ranges {
		db.lines = append(db.lines, r.line)
	}
	db.add(owner, strconv.FormatInt(start, 10), strconv.FormatInt(count, 10))
	return nil
}
