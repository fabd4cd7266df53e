package pxe

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func testServer(t *testing.T) (*Server, *httptest.Server, *[]Access, string) {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "etcd")
	if err := os.WriteFile(bin, []byte("not really etcd"), 0o755); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var log []Access
	statusFile := filepath.Join(dir, "pxe", "status.json")
	s, err := New(Options{
		Cluster: "demo",
		Nodes: []Node{
			{Name: "etcd-1", MAC: "52:54:00:88:00:11", Config: []byte(`{"node":"etcd-1"}`)},
			{Name: "etcd-2", MAC: "52-54-00-88-00-12", Config: []byte(`{"node":"etcd-2"}`)},
		},
		URL:        "http://10.0.2.2:8080/",
		Binaries:   []Binary{{Name: "etcd", Path: bin}},
		FCOS:       FCOS{Kernel: "http://files/k", Initramfs: "http://files/i", Rootfs: "http://files/r", Args: "console=ttyS0"},
		StatusFile: statusFile,
		Log:        func(a Access) { mu.Lock(); log = append(log, a); mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return s, ts, &log, statusFile
}

func get(t *testing.T, url string) (int, string, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
}

func TestServePaths(t *testing.T) {
	s, ts, log, statusFile := testServer(t)

	code, _, body := get(t, ts.URL+"/boot.ipxe")
	if code != 200 || body != "#!ipxe\nchain ipxe?mac=${mac:hexhyp}\n" {
		t.Errorf("/boot.ipxe: %d %q", code, body)
	}

	// Every spelling of etcd-1's MAC gets etcd-1's config, and only that.
	for _, mac := range []string{"52:54:00:88:00:11", "52-54-00-88-00-11", "52-54-00-88-00-11", "52:54:00:88:00:11"} {
		for _, m := range []string{mac, strings.ToUpper(mac)} {
			code, ctype, body := get(t, ts.URL+"/ignition?mac="+m)
			if code != 200 || body != `{"node":"etcd-1"}` || ctype != "application/vnd.coreos.ignition+json" {
				t.Errorf("/ignition?mac=%s: %d %s %q", m, code, ctype, body)
			}
		}
	}
	if code, _, body := get(t, ts.URL+"/ignition?mac=52:54:00:88:00:12"); code != 200 || body != `{"node":"etcd-2"}` {
		t.Errorf("etcd-2 (spec MAC with hyphens): %d %q", code, body)
	}

	// The iPXE script boots the live images with this node's config URL.
	code, _, body = get(t, ts.URL+"/ipxe?mac=52-54-00-88-00-11")
	for _, want := range []string{"#!ipxe\n", "kernel http://files/k initrd=main ", "ignition.config.url=http://10.0.2.2:8080/ignition?mac=52-54-00-88-00-11 ",
		"coreos.live.rootfs_url=http://files/r", "console=ttyS0", "\ninitrd --name main http://files/i\nboot\n", "node etcd-1 "} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/ipxe for etcd-1: %d, lacks %q:\n%s", code, want, body)
		}
	}

	// Unknown or malformed MACs: a clear error, never a config.
	for url, want := range map[string]int{
		"/ignition?mac=52:54:00:88:00:99": 404,
		"/ipxe?mac=52:54:00:88:00:99":     404,
		"/ignition?mac=nonsense":          400,
		"/ignition":                       400,
		"/binaries/etcd-secret":           404,
		"/binaries/../pxe.go":             404,
		"/other":                          404,
	} {
		code, _, body := get(t, ts.URL+url)
		if code != want || strings.Contains(body, `"node"`) {
			t.Errorf("%s: %d %q, want %d and no config", url, code, body, want)
		}
	}
	if _, _, body := get(t, ts.URL+"/ignition?mac=52:54:00:88:00:99"); !strings.Contains(body, "no node of cluster demo has MAC 52:54:00:88:00:99") {
		t.Errorf("unknown MAC message: %q", body)
	}
	resp, err := http.Post(ts.URL+"/ignition?mac=52:54:00:88:00:11", "text/plain", nil)
	if err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %v %v", err, resp.Status)
	}
	resp.Body.Close()

	if code, ctype, body := get(t, ts.URL+"/binaries/etcd"); code != 200 || body != "not really etcd" || ctype != "application/octet-stream" {
		t.Errorf("/binaries/etcd: %d %s %q", code, ctype, body)
	}

	// The access log names MAC, node and what was served, also for refusals.
	var sawUnknown, sawConfig bool
	for _, a := range *log {
		if a.MAC == "52:54:00:88:00:99" && a.Status == 404 && a.Node == "" && strings.Contains(a.What, "no node") {
			sawUnknown = true
		}
		if a.Node == "etcd-1" && a.What == "ignition config" && a.Status == 200 && a.Bytes == int64(len(`{"node":"etcd-1"}`)) {
			sawConfig = true
		}
		if !strings.Contains(a.String(), a.Path) {
			t.Errorf("log line %q lacks the path", a.String())
		}
	}
	if !sawUnknown || !sawConfig {
		t.Errorf("access log (unknown %v, config %v): %+v", sawUnknown, sawConfig, *log)
	}

	// Status: what each node fetched, also written to the status file.
	st := s.Status()
	if len(st) != 2 || st[0].Node != "etcd-1" || st[0].Fetched["ignition"].Count != 8 || st[0].Fetched["ipxe"].Count != 1 ||
		st[1].Fetched["ignition"].Count != 1 || st[1].Fetched["ipxe"].Count != 0 {
		t.Errorf("status: %+v", st)
	}
	b, err := os.ReadFile(statusFile)
	if err != nil {
		t.Fatal(err)
	}
	var fromFile []NodeStatus
	if err := json.Unmarshal(b, &fromFile); err != nil || len(fromFile) != 2 || fromFile[0].Fetched["ignition"].Count != 8 || fromFile[1].MAC != "52:54:00:88:00:12" {
		t.Errorf("status file: %v %s", err, b)
	}
	if time.Since(fromFile[0].Fetched["ignition"].Last) > time.Minute {
		t.Errorf("status time: %+v", fromFile[0].Fetched["ignition"])
	}
}

func TestNewRefusesBadNodes(t *testing.T) {
	cfg := []byte("{}")
	for name, o := range map[string]Options{
		"no URL":       {Nodes: []Node{{Name: "a", MAC: "52:54:00:00:00:01", Config: cfg}}},
		"no MAC":       {URL: "http://x", Nodes: []Node{{Name: "a", Config: cfg}}},
		"bad MAC":      {URL: "http://x", Nodes: []Node{{Name: "a", MAC: "52:54", Config: cfg}}},
		"same MAC":     {URL: "http://x", Nodes: []Node{{Name: "a", MAC: "52:54:00:00:00:01", Config: cfg}, {Name: "b", MAC: "52-54-00-00-00-01", Config: cfg}}},
		"no config":    {URL: "http://x", Nodes: []Node{{Name: "a", MAC: "52:54:00:00:00:01"}}},
		"missing file": {URL: "http://x", Binaries: []Binary{{Name: "etcd", Path: "/nonexistent/etcd"}}},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

func TestNoBootImages(t *testing.T) {
	s, err := New(Options{Cluster: "demo", URL: "http://x", Nodes: []Node{{Name: "etcd-1", MAC: "52:54:00:88:00:11", Config: []byte("{}")}}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s)
	defer ts.Close()
	code, _, body := get(t, ts.URL+"/ipxe?mac=52:54:00:88:00:11")
	if code != 404 || !strings.Contains(body, "--fcos-kernel") {
		t.Errorf("%d %q", code, body)
	}
}
