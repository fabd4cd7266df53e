package vmcluster

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// Running commands in a guest: every VM gets a virtio-serial port named
// org.qemu.guest_agent.0, backed by a Unix socket in the run directory. The base's
// qemu-guest-agent package starts the agent when udev sees the port (on real hardware the
// port does not exist and the agent never runs). Only the host user who runs QEMU can open
// the socket.

// guestAgentArgs are the QEMU arguments for the agent's channel at path.
func guestAgentArgs(path string) []string {
	return []string{
		"-chardev", "socket,id=qga,path=" + path + ",server=on,wait=off",
		"-device", "virtio-serial-pci",
		"-device", "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
	}
}

// ExecResult is what a command run in the guest returned.
type ExecResult struct {
	ExitCode int
	Stdout   string
	Stderr   string
}

// Exec runs argv[0] with arguments argv[1:] in the guest as root, through the guest agent,
// and waits for it. It waits for the agent to answer first (the guest may still be booting)
// until ctx ends.
func (vm *VM) Exec(ctx context.Context, argv ...string) (ExecResult, error) {
	if len(argv) == 0 {
		return ExecResult{}, errors.New("no command")
	}
	for {
		res, err := vm.execOnce(ctx, argv)
		if err == nil || ctx.Err() != nil || !errors.Is(err, errAgentSilent) {
			return res, err
		}
		select {
		case <-ctx.Done():
			return res, fmt.Errorf("%s: guest agent: %w (last: %v)", vm.Name, ctx.Err(), err)
		case err := <-vm.done:
			vm.done <- err
			return res, fmt.Errorf("%s: QEMU exited: %v", vm.Name, err)
		case <-time.After(time.Second):
		}
	}
}

var errAgentSilent = errors.New("guest agent not answering yet")

func (vm *VM) execOnce(ctx context.Context, argv []string) (ExecResult, error) {
	var res ExecResult
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", vm.qgaPath)
	if err != nil {
		return res, fmt.Errorf("%w: %v", errAgentSilent, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	r := bufio.NewReader(conn)

	// Synchronise: guest-sync-delimited answers with 0xFF before its JSON, so anything
	// stale in the channel is skipped. (A leading 0xFF from the client, which the
	// protocol allows for resetting the agent's parser, makes qemu-ga 7.2 drop the
	// command with a parse error.)
	id := time.Now().UnixNano() & 0x7fffffff
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintf(conn, `{"execute":"guest-sync-delimited","arguments":{"id":%d}}`+"\n", id); err != nil {
		return res, fmt.Errorf("%w: %v", errAgentSilent, err)
	}
	for {
		b, err := r.ReadByte()
		if err != nil {
			return res, fmt.Errorf("%w: %v", errAgentSilent, err)
		}
		if b == 0xff {
			break
		}
	}
	var sync struct {
		Return int64 `json:"return"`
	}
	if err := readJSON(r, &sync); err != nil || sync.Return != id {
		return res, fmt.Errorf("%w: sync answered %d (%v)", errAgentSilent, sync.Return, err)
	}
	conn.SetDeadline(time.Time{})
	if ctx.Err() != nil {
		return res, ctx.Err()
	}

	call := func(cmd string, args any, out any) error {
		b, _ := json.Marshal(map[string]any{"execute": cmd, "arguments": args})
		if _, err := conn.Write(append(b, '\n')); err != nil {
			return err
		}
		var reply struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class, Desc string
			} `json:"error"`
		}
		if err := readJSON(r, &reply); err != nil {
			return err
		}
		if reply.Error != nil {
			return fmt.Errorf("%s: %s: %s", cmd, reply.Error.Class, reply.Error.Desc)
		}
		return json.Unmarshal(reply.Return, out)
	}
	var started struct {
		PID int `json:"pid"`
	}
	if err := call("guest-exec", map[string]any{"path": argv[0], "arg": argv[1:], "capture-output": true}, &started); err != nil {
		return res, fmt.Errorf("%s: %w", vm.Name, err)
	}
	// Poll quickly for short commands, then back off: under TCG every poll costs the
	// guest CPU (and a journal line from qemu-ga) that the command itself needs.
	poll := 100 * time.Millisecond
	for {
		var st struct {
			Exited   bool   `json:"exited"`
			ExitCode int    `json:"exitcode"`
			Signal   int    `json:"signal"`
			Out      string `json:"out-data"`
			Err      string `json:"err-data"`
		}
		if err := call("guest-exec-status", map[string]any{"pid": started.PID}, &st); err != nil {
			return res, fmt.Errorf("%s: %w", vm.Name, err)
		}
		if st.Exited {
			o, _ := base64.StdEncoding.DecodeString(st.Out)
			e, _ := base64.StdEncoding.DecodeString(st.Err)
			res = ExecResult{ExitCode: st.ExitCode, Stdout: string(o), Stderr: string(e)}
			if st.Signal != 0 {
				res.ExitCode = 128 + st.Signal
			}
			return res, nil
		}
		select {
		case <-ctx.Done():
			return res, fmt.Errorf("%s: %v still running in the guest: %w", vm.Name, argv, ctx.Err())
		case <-time.After(poll):
		}
		poll = min(2*poll, time.Second)
	}
}

// readJSON reads one JSON value (the agent ends each with a newline).
func readJSON(r *bufio.Reader, v any) error {
	line, err := r.ReadBytes('\n')
	if err != nil {
		return err
	}
	return json.Unmarshal(line, v)
}
