// Package qemu boots etcdbake's disk images as QEMU virtual machines (UEFI via OVMF, TCG
// unless KVM is proven to work) for `etcdbake up`, the project's tests and users' tests.
// Networking stays on the machine: user-mode NICs with restrict=on and host forwards on
// 127.0.0.1 only.
package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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

// Options describe one VM.
type Options struct {
	Name string
	// Image is the node's disk image (raw or qcow2); the VM writes to a copy-on-write
	// overlay in Dir, so the image stays pristine.
	Image string
	// Dir holds the overlay, firmware variables, console log and QMP socket.
	Dir       string
	MemoryMiB int
	// Forward lists guest TCP ports reachable from the host on 127.0.0.1 (ports chosen
	// by QEMU; read them with HostPort).
	Forward []int
	// MAC of the user-mode NIC (the node's spec MAC, so its static address lands on it).
	MAC string
	// RTCBase sets the guest clock (QEMU -rtc base=), e.g. "2026-01-01T00:00:00".
	RTCBase string
}

// VM is a running QEMU process.
type VM struct {
	Name    string
	Console string // serial console log
	cmd     *exec.Cmd
	qmpPath string
	qgaPath string // guest agent socket (see guestagent.go)
	done    chan error
}

// Check reports what is missing to run VMs here.
func Check() error {
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
	if len(missing) > 0 {
		return fmt.Errorf("cannot run VMs: missing %s", strings.Join(missing, ", "))
	}
	return nil
}

// Start boots a VM. QEMU runs with TCG: KVM hangs on this project's machines (nested
// virtualisation), so it is never assumed.
func Start(ctx context.Context, o Options) (*VM, error) {
	if err := Check(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	format := "raw"
	if strings.HasSuffix(o.Image, ".qcow2") {
		format = "qcow2"
	}
	abs, err := filepath.Abs(o.Image)
	if err != nil {
		return nil, err
	}
	overlay := filepath.Join(o.Dir, o.Name+".overlay.qcow2")
	_ = os.Remove(overlay)
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", abs, "-F", format, overlay).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("overlay for %s: %v: %s", o.Name, err, out)
	}
	vars := filepath.Join(o.Dir, o.Name+".vars.fd")
	b, err := os.ReadFile(OVMFVars)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(vars, b, 0o644); err != nil {
		return nil, err
	}
	vm := &VM{Name: o.Name, Console: filepath.Join(o.Dir, o.Name+".log"), qmpPath: filepath.Join(o.Dir, o.Name+".qmp"), qgaPath: filepath.Join(o.Dir, o.Name+".qga"), done: make(chan error, 1)}
	_ = os.Remove(vm.qmpPath)
	_ = os.Remove(vm.qgaPath)
	mem := o.MemoryMiB
	if mem == 0 {
		mem = 1024
	}
	netdev := "user,id=u0,restrict=on"
	for _, p := range o.Forward {
		netdev += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:0-:%d", p)
	}
	nic := "virtio-net-pci,netdev=u0"
	if o.MAC != "" {
		nic += ",mac=" + o.MAC
	}
	args := []string{
		"-name", o.Name, "-machine", "q35", "-accel", "tcg,tb-size=64", "-m", strconv.Itoa(mem), "-smp", "1",
		"-drive", "if=pflash,format=raw,readonly=on,file=" + OVMFCode,
		"-drive", "if=pflash,format=raw,file=" + vars,
		"-drive", "if=virtio,format=qcow2,file=" + overlay,
		"-netdev", netdev, "-device", nic,
		"-serial", "file:" + vm.Console, "-display", "none", "-monitor", "none", "-no-reboot",
		"-qmp", "unix:" + vm.qmpPath + ",server=on,wait=off",
	}
	args = append(args, guestAgentArgs(vm.qgaPath)...)
	if o.RTCBase != "" {
		args = append(args, "-rtc", "base="+o.RTCBase)
	}
	vm.cmd = exec.Command("qemu-system-x86_64", args...)
	var stderr strings.Builder
	vm.cmd.Stderr = &stderr
	if err := vm.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting QEMU for %s: %w", o.Name, err)
	}
	go func() {
		err := vm.cmd.Wait()
		if err != nil && stderr.Len() > 0 {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
		}
		vm.done <- err
	}()
	return vm, nil
}

// PID is the QEMU process's ID.
func (vm *VM) PID() int {
	if vm.cmd.Process == nil {
		return 0
	}
	return vm.cmd.Process.Pid
}

// running says whether QEMU has not exited yet.
func (vm *VM) running() bool {
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
