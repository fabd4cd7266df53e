// Command etcdbake-installer runs in the installer's initramfs (see package pxe): it
// streams this machine's disk image from `etcdbake serve` onto its disk, checks the
// SHA-256, tells the server, and reboots into the installed system. After an error it
// says why on the console, tells the server, wipes the half-written partition tables and
// powers off after a minute (so a machine never boots a corrupted image).
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/etcdbake/etcdbake/pxe"
)

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stdout, "etcdbake-installer: "+format+"\n", args...)
}

func main() {
	err := run()
	if err != nil {
		logf("FAILED: %v", err)
		logf("powering off in 60 s")
		time.Sleep(60 * time.Second)
		unix.Sync()
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		os.Exit(1)
	}
	logf("rebooting into the installed system")
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	os.Exit(0)
}

func run() error {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	o, err := pxe.ParseCmdline(string(b))
	if err != nil {
		return err
	}
	ctx := context.Background()
	_, err = pxe.Install(ctx, o, logf)
	pxe.ReportResult(ctx, o.Report, err)
	return err
}
