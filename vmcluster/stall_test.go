package vmcluster

import (
	"os"
	"path/filepath"
	"testing"
)

// TestEndsWithReset: a console whose last lines are the kernel's reboot counts as a
// guest reset waiting for its firmware; one where the firmware or a kernel printed after
// it does not.
func TestEndsWithReset(t *testing.T) {
	hung := "[   92.127451] systemd-shutdown[1]: Rebooting.\n[   92.143496] ACPI: PM: Preparing to enter system sleep state S5\n[   92.146487] reboot: Restarting system\n[   92.146741] reboot: machine restart\n"
	for name, tc := range map[string]struct {
		console string
		want    bool
	}{
		"hung after the reset":      {hung, true},
		"only Restarting system":    {"[ 1.0] reboot: Restarting system\r\n", true},
		"firmware printed after it": {hung + "BdsDxe: loading Boot0002 \"UEFI Misc Device\"\n", false},
		"booted again":              {hung + "[    0.000000] Linux version 6.1.0\n", false},
		"powered off":               {"[ 9.1] reboot: Power down\n", false},
		"empty":                     {"", false},
	} {
		p := filepath.Join(t.TempDir(), "console.log")
		if err := os.WriteFile(p, []byte(tc.console), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := endsWithReset(p, int64(len(tc.console))); got != tc.want {
			t.Errorf("%s: endsWithReset = %v, want %v", name, got, tc.want)
		}
	}
}
