package vmcluster

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Firmware paths from Debian's ovmf package.
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS.fd"
)

// VM is a running QEMU process.
type VM struct {
	Name    string
	Console string // serial console log
	cmd     *exec.Cmd
	qmpPath string
	qgaPath string // guest agent socket (see guestagent.go)
	done    chan error
}

// Missing lists what this machine lacks to run VMs, each with the Debian package that
// provides it; empty when nothing is missing.
func Missing() []string {
	var missing []string
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		missing = append(missing, "qemu-system-x86_64 (apt-get install qemu-system-x86)")
	}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		missing = append(missing, "qemu-img (apt-get install qemu-utils)")
	}
	for _, f := range []string{OVMFCode, OVMFVars} {
		if _, err := os.Stat(f); err != nil {
			missing = append(missing, f+" (apt-get install ovmf)")
		}
	}
	return missing
}

// Check reports what is missing to run VMs here (see Missing).
func Check() error {
	if m := Missing(); len(m) > 0 {
		return fmt.Errorf("cannot run VMs: missing %s", strings.Join(m, ", "))
	}
	return nil
}

// PID is the QEMU process's ID.
func (vm *VM) PID() int {
	if vm.cmd.Process == nil {
		return 0
	}
	return vm.cmd.Process.Pid
}

// Running says whether QEMU has not exited yet.
func (vm *VM) Running() bool {
	select {
	case err := <-vm.done:
		vm.done <- err
		return false
	default:
		return true
	}
}

// Kill stops the VM at once (like pulling the plug).
func (vm *VM) Kill() {
	if vm.cmd.Process != nil {
		_ = vm.cmd.Process.Kill()
	}
	select {
	case <-vm.done:
	case <-time.After(10 * time.Second):
	}
}

var usernetRe = regexp.MustCompile(`TCP\[HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1\s+(\d+)\s+\S+\s+(\d+)`)

// HostPort returns the host port (on 127.0.0.1) forwarded to a guest port, read over QMP.
func (vm *VM) HostPort(ctx context.Context, guest int) (int, error) {
	out, err := vm.hmp(ctx, "info usernet")
	if err != nil {
		return 0, err
	}
	for _, m := range usernetRe.FindAllStringSubmatch(out, -1) {
		if m[2] == strconv.Itoa(guest) {
			return strconv.Atoi(m[1])
		}
	}
	return 0, fmt.Errorf("%s: no forward to guest port %d in:\n%s", vm.Name, guest, out)
}

// hmp runs a human monitor command through QMP.
func (vm *VM) hmp(ctx context.Context, command string) (string, error) {
	var conn net.Conn
	var err error
	for i := 0; i < 100; i++ {
		conn, err = net.Dial("unix", vm.qmpPath)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case err := <-vm.done:
			vm.done <- err
			return "", fmt.Errorf("%s: QEMU exited: %v", vm.Name, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err != nil {
		return "", fmt.Errorf("%s: QMP: %w", vm.Name, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	if _, err := r.ReadBytes('\n'); err != nil { // greeting
		return "", err
	}
	send := func(v any) (map[string]json.RawMessage, error) {
		b, _ := json.Marshal(v)
		if _, err := conn.Write(append(b, '\n')); err != nil {
			return nil, err
		}
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return nil, err
			}
			var m map[string]json.RawMessage
			if json.Unmarshal(line, &m) != nil {
				continue
			}
			if _, ev := m["event"]; ev {
				continue
			}
			return m, nil
		}
	}
	if _, err := send(map[string]any{"execute": "qmp_capabilities"}); err != nil {
		return "", err
	}
	m, err := send(map[string]any{"execute": "human-monitor-command", "arguments": map[string]string{"command-line": command}})
	if err != nil {
		return "", err
	}
	var s string
	if e, ok := m["error"]; ok {
		return "", errors.New(string(e))
	}
	_ = json.Unmarshal(m["return"], &s)
	return s, nil
}

// WaitConsole waits until the serial console shows a line matching re; it fails early
// when QEMU exits.
func (vm *VM) WaitConsole(ctx context.Context, re *regexp.Regexp) (string, error) {
	for {
		b, _ := os.ReadFile(vm.Console)
		if m := re.Find(b); m != nil {
			return string(m), nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%s: %w waiting for %q on the console (last lines:\n%s)", vm.Name, ctx.Err(), re, tail(b, 15))
		case err := <-vm.done:
			vm.done <- err
			return "", fmt.Errorf("%s: QEMU exited (%v) before %q appeared (last lines:\n%s)", vm.Name, err, re, tail(b, 15))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
