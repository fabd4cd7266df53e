package ignapply

import (
	"os"
	"strings"
	"testing"

	"github.com/coreos/ignition/v2/config/v3_4/types"
	"github.com/etcdbake/etcdbake/imagebuild/fstree"
	"github.com/etcdbake/etcdbake/imagebuild/internal/imagetest"
)

// TestApplyIgnitionUnitsMatchIgnitionApply covers the unit rules on a base with units
// already enabled, masked, static and templated: writing units and drop-ins, mask and
// unmask, disabling (ignition-apply runs systemctl disable) and the preset lines; then
// `systemctl enable` of the enabled units on Ignition's result must give Apply's
// symlinks, including Also=, RequiredBy=, line continuations and units without contents.
func TestApplyIgnitionUnitsMatchIgnitionApply(t *testing.T) {
	apply := imagetest.IgnitionApply(t)
	base := func() *fstree.Tree {
		tr := imagetest.BaseTree(t)
		u := "usr/lib/systemd/system/"
		imagetest.Link(t, tr, "etc/systemd/system/multi-user.target.wants/chronyd.service", "/lib/systemd/system/chronyd.service")
		imagetest.Link(t, tr, "etc/systemd/system/chrony.service", "/lib/systemd/system/chronyd.service")
		imagetest.File(t, tr, u+"static.service", 0o644, 0, 0, "[Service]\nExecStart=/bin/true\n")
		imagetest.File(t, tr, u+"off.service", 0o644, 0, 0, "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n")
		imagetest.File(t, tr, u+"bar.service", 0o644, 0, 0, "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n")
		imagetest.Link(t, tr, "etc/systemd/system/bar.service", "/dev/null")
		imagetest.File(t, tr, u+"tmpl@.service", 0o644, 0, 0, "[Service]\nExecStart=/bin/echo %i\n[Install]\nWantedBy=multi-user.target\n")
		imagetest.File(t, tr, u+"sshd.service", 0o644, 0, 0, "[Service]\nExecStart=/usr/sbin/sshd -D\n[Install]\nWantedBy=multi-user.target\nAlso=sshd-keygen.service\n")
		imagetest.File(t, tr, u+"sshd-keygen.service", 0o644, 0, 0, "[Service]\nType=oneshot\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target \\\n  sshd.service\n")
		return tr
	}
	newUnit := "[Unit]\nDescription=new\n\n[Service]\nExecStart=/bin/true\n\n[Install]\nWantedBy=multi-user.target\nRequiredBy=foo.target\n"
	var c types.Config
	c.Systemd.Units = []types.Unit{
		{Name: "chronyd.service", Enabled: imagetest.Ptr(false), Dropins: []types.Dropin{{Name: "10-etcdbake.conf", Contents: imagetest.Ptr("[Service]\nExecStart=\nExecStart=/usr/sbin/chronyd\n")}}},
		{Name: "static.service", Enabled: imagetest.Ptr(false)},
		{Name: "off.service", Enabled: imagetest.Ptr(false)},
		{Name: "missing.service", Enabled: imagetest.Ptr(false)},
		{Name: "new.service", Contents: imagetest.Ptr(newUnit), Enabled: imagetest.Ptr(true), Dropins: []types.Dropin{{Name: "empty.conf", Contents: imagetest.Ptr("")}, {Name: "skipped.conf"}}},
		{Name: "bar.service", Mask: imagetest.Ptr(false), Enabled: imagetest.Ptr(true)},
		{Name: "foo.service", Mask: imagetest.Ptr(true), Contents: imagetest.Ptr("[Service]\nExecStart=/bin/true\n")},
		{Name: "sshd.service", Enabled: imagetest.Ptr(true)},
	}
	raw := imagetest.JSON(t, c)

	mine := base()
	if err := Apply(mine, raw, Options{}); err != nil {
		t.Fatal(err)
	}
	preset, _ := mine.Get(ignPresetPath)
	if want := "enable bar.service\ndisable chronyd.service\nenable new.service\nenable sshd.service\ndisable static.service\n"; preset == nil || string(preset.Data) != want {
		t.Errorf("preset file:\n%v\nwant:\n%s", preset, want)
	}

	root := imagetest.RootDir(t)
	imagetest.WriteTree(t, base(), root)
	imagetest.RunIgnitionApply(t, apply, root, raw)
	imagetest.Systemctl(t, root, "enable", "new.service", "bar.service", "sshd.service")
	imagetest.Compare(t, mine, imagetest.ReadDir(t, root), nil, nil)

	for p, want := range map[string]string{
		"etc/systemd/system/multi-user.target.wants/new.service":         "/etc/systemd/system/new.service",
		"etc/systemd/system/foo.target.requires/new.service":             "/etc/systemd/system/new.service",
		"etc/systemd/system/multi-user.target.wants/bar.service":         "/lib/systemd/system/bar.service",
		"etc/systemd/system/multi-user.target.wants/sshd-keygen.service": "/lib/systemd/system/sshd-keygen.service",
		"etc/systemd/system/sshd.service.wants/sshd-keygen.service":      "/lib/systemd/system/sshd-keygen.service",
		"etc/systemd/system/foo.service":                                 "/dev/null",
	} {
		if e, ok := mine.Get(p); !ok || !e.IsSymlink() || e.Target != want {
			t.Errorf("/%s should be a symlink to %s", p, want)
		}
	}
	for _, p := range []string{"etc/systemd/system/multi-user.target.wants/chronyd.service", "etc/systemd/system/chrony.service", "etc/systemd/system/bar.service"} {
		if _, ok := mine.Get(p); ok {
			t.Errorf("/%s should be gone", p)
		}
	}
}

// TestApplyIgnitionTemplateUnitsMatchSystemctl: enabled instances of templates, and a
// template with DefaultInstance=, get the symlinks `systemctl enable` makes, and the
// preset lines Ignition writes for them. (ignition-apply cannot be the reference here:
// with instantiated units it asks the running systemd for its version over D-Bus.)
func TestApplyIgnitionTemplateUnitsMatchSystemctl(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("writing the reference tree sets owners with chown, which needs root; run the tests as root (CI does)")
	}
	base := func() *fstree.Tree {
		tr := imagetest.BaseTree(t)
		u := "usr/lib/systemd/system/"
		imagetest.File(t, tr, u+"tmpl@.service", 0o644, 0, 0, "[Service]\nExecStart=/bin/echo %i\n[Install]\nWantedBy=multi-user.target x-%i.target\n")
		imagetest.File(t, tr, u+"def@.service", 0o644, 0, 0, "[Service]\nExecStart=/bin/echo %i\n[Install]\nWantedBy=multi-user.target\nDefaultInstance=main\n")
		return tr
	}
	var c types.Config
	c.Systemd.Units = []types.Unit{
		{Name: "tmpl@a.service", Enabled: imagetest.Ptr(true)},
		{Name: "tmpl@b.service", Enabled: imagetest.Ptr(true)},
		{Name: "def@.service", Enabled: imagetest.Ptr(true)},
	}
	mine := base()
	if err := Apply(mine, imagetest.JSON(t, c), Options{}); err != nil {
		t.Fatal(err)
	}
	preset, _ := mine.Get(ignPresetPath)
	if want := "enable def@.service \nenable tmpl@.service a b\n"; preset == nil || string(preset.Data) != want {
		t.Errorf("preset file:\n%v\nwant:\n%q", preset, want)
	}
	root := imagetest.RootDir(t)
	imagetest.WriteTree(t, base(), root)
	imagetest.Systemctl(t, root, "enable", "tmpl@a.service", "tmpl@b.service", "def@.service")
	imagetest.Compare(t, mine, imagetest.ReadDir(t, root), func(p string) bool { return strings.HasPrefix(p, "etc/systemd/system-preset") }, nil)
	for p, want := range map[string]string{
		"etc/systemd/system/multi-user.target.wants/tmpl@a.service":   "/lib/systemd/system/tmpl@.service",
		"etc/systemd/system/x-b.target.wants/tmpl@b.service":          "/lib/systemd/system/tmpl@.service",
		"etc/systemd/system/multi-user.target.wants/def@main.service": "/lib/systemd/system/def@.service",
	} {
		if e, ok := mine.Get(p); !ok || !e.IsSymlink() || e.Target != want {
			t.Errorf("/%s should be a symlink to %s", p, want)
		}
	}
}

// ---- storage edge cases against ignition-apply -------------------------------------
