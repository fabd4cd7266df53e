package pxe

// Releases over mutual TLS (issue 14): a node downloads its slot's partition images from
// the operator's machine, authenticated by its own etcd-firstboot client certificate, and
// may fetch only its own files. Unlike the MAC-matched PXE paths above, this is
// authenticated: the TLS layer accepts only certificates issued by the cluster's
// client/server CA, and the handler accepts only a node's etcd-firstboot certificate for
// that node's paths.

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/etcdbake/etcdbake/spec"
)

// ReleasePrefix is the URL path under which ReleaseHandler serves releases:
// ReleasePrefix + "<id>/<node>/<file>".
const ReleasePrefix = "/v1/releases/"

// The files of a release a node may fetch, by their name in the URL.
const (
	ReleaseManifest = "manifest.json" // <id>/manifest.json
	ReleaseRoot     = "root"          // <id>/root.ext4, the same for every node
	ReleaseNode     = "node"          // <id>/nodes/<node>/node.ext4, the node's own partition
	ReleaseLinux    = "linux"         // <id>/boot/linux
	ReleaseInitrd   = "initrd"        // <id>/boot/initrd
)

// ReleaseFiles lists the file names of ReleaseFilePath in URL form.
var ReleaseFiles = []string{ReleaseManifest, ReleaseRoot, ReleaseNode, ReleaseLinux, ReleaseInitrd}

// FirstbootCNPrefix starts the CN of a node's etcd-firstboot client certificate
// ("etcd-firstboot:<node>"), the identity ReleaseHandler accepts.
const FirstbootCNPrefix = "etcd-firstboot:"

var releaseIDRe = regexp.MustCompile(`^[0-9a-f]{12}$`)

// ReleaseFilePath maps a file name of the URL (one of ReleaseFiles) to its path inside
// the releases directory, in slash form. ok is false for an unknown file, or an id or
// node name that is not a plain path element.
func ReleaseFilePath(id, node, file string) (p string, ok bool) {
	if !releaseIDRe.MatchString(id) || !spec.IsLabel(node) {
		return "", false
	}
	switch file {
	case ReleaseManifest:
		return id + "/manifest.json", true
	case ReleaseRoot:
		return id + "/root.ext4", true
	case ReleaseNode:
		return id + "/nodes/" + node + "/node.ext4", true
	case ReleaseLinux:
		return id + "/boot/linux", true
	case ReleaseInitrd:
		return id + "/boot/initrd", true
	}
	return "", false
}

// ReleaseOptions configure a ReleaseHandler.
type ReleaseOptions struct {
	Cluster string   // the cluster's name, for messages
	Dir     string   // the releases directory (OUT/releases); it may appear later
	Nodes   []string // the spec's node names: only they are served
	// Log receives one record per request. Node is the node the client certificate
	// names, when it is a node's etcd-firstboot certificate.
	Log func(Access)
	Now func() time.Time
}

// ReleaseHandler serves GET and HEAD on ReleasePrefix<id>/<node>/<file> to the node
// itself. Answers:
//
//	200/206/304/412/416  the file, through http.ServeContent (Range, If-Range,
//	                     If-None-Match work), with ETag "sha256-<hex of the file>"
//	400  the path is not <12 hex id>/<node name>/<file> or has %-escapes
//	403  no verified client certificate, no clientAuth usage, not an etcd-firstboot
//	     certificate, another node's path, or a node not in the spec
//	404  another path, an unknown file name, release or file
//	405  another method
//
// It relies on the TLS layer (ReleaseTLSConfig) for the chain check; a request without
// a verified chain gets a 403 (not a 401: there is no HTTP authentication scheme to
// offer). Create it with NewReleaseHandler.
type ReleaseHandler struct {
	o     ReleaseOptions
	mu    sync.Mutex
	etags map[etagKey]*etagEntry
}

type etagKey struct {
	path  string
	size  int64
	mtime int64
}

type etagEntry struct {
	once sync.Once
	tag  string
	err  error
}

// NewReleaseHandler checks the options and returns the handler.
func NewReleaseHandler(o ReleaseOptions) (*ReleaseHandler, error) {
	if o.Dir == "" {
		return nil, errors.New("pxe: no releases directory")
	}
	if len(o.Nodes) == 0 {
		return nil, errors.New("pxe: no nodes to serve releases to")
	}
	for _, n := range o.Nodes {
		if !spec.IsLabel(n) {
			return nil, fmt.Errorf("pxe: node name %q cannot be part of a release path: validate the spec first", n)
		}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	o.Nodes = slices.Clone(o.Nodes)
	return &ReleaseHandler{o: o, etags: map[etagKey]*etagEntry{}}, nil
}

// ReleaseTLSConfig is the server side of the release service: TLS 1.3 only, the given
// server certificate (pki.EnsureServeCert), and a client certificate that verifies
// against caFile (the cluster's client/server CA, pki "ca") required on every
// connection. Peer certificates (peer CA) and certificates of other CAs fail the
// handshake.
func ReleaseTLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("pxe: release server: cluster CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("pxe: release server: %s holds no PEM certificate", caFile)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("pxe: release server certificate: %w", err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		Certificates: []tls.Certificate{cert},
	}, nil
}

// ServeHTTP implements http.Handler.
func (h *ReleaseHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a := Access{Time: h.o.Now(), Remote: r.RemoteAddr, Path: r.URL.RequestURI()}
	sw := &statusWriter{ResponseWriter: w}
	defer func() {
		if a.Status == 0 {
			a.Status = sw.status
		}
		a.Bytes = sw.n
		if h.o.Log != nil {
			h.o.Log(a)
		}
	}()
	fail := func(status int, what string) {
		a.Status, a.What = status, what
		http.Error(sw, what, status)
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		sw.Header().Set("Allow", "GET, HEAD")
		fail(http.StatusMethodNotAllowed, "only GET and HEAD")
		return
	}

	// Who is asking: a node's etcd-firstboot certificate, verified by the TLS layer.
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		fail(http.StatusForbidden, "no verified client certificate: connect with mutual TLS and the node's etcd-firstboot certificate (/etc/etcdbake/pki/firstboot.crt)")
		return
	}
	leaf := r.TLS.VerifiedChains[0][0]
	cn := leaf.Subject.CommonName
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		fail(http.StatusForbidden, fmt.Sprintf("client certificate %q is not for TLS clients (no clientAuth extended key usage)", cn))
		return
	}
	client, ok := strings.CutPrefix(cn, FirstbootCNPrefix)
	if !ok || !spec.IsLabel(client) {
		fail(http.StatusForbidden, fmt.Sprintf("client certificate %q is not a node's etcd-firstboot certificate (CN %s<node>): only nodes fetch releases", cn, FirstbootCNPrefix))
		return
	}
	a.Node = client

	// What it asks for.
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), ReleasePrefix)
	if !ok {
		fail(http.StatusNotFound, "not found: this server serves "+ReleasePrefix+"<id>/<node>/{"+strings.Join(ReleaseFiles, ",")+"}")
		return
	}
	if strings.Contains(rest, "%") {
		fail(http.StatusBadRequest, "bad release path: %-escapes are not allowed (ids, node names and file names need none)")
		return
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 {
		fail(http.StatusBadRequest, "bad release path: want "+ReleasePrefix+"<id>/<node>/<file>")
		return
	}
	id, node, file := parts[0], parts[1], parts[2]
	if !releaseIDRe.MatchString(id) {
		fail(http.StatusBadRequest, fmt.Sprintf("bad release id %q: 12 lowercase hex digits", id))
		return
	}
	if !spec.IsLabel(node) {
		fail(http.StatusBadRequest, fmt.Sprintf("bad node name %q", node))
		return
	}
	if node != client {
		fail(http.StatusForbidden, fmt.Sprintf("%s may fetch only its own files (%s%s/%s/...), not %s's", cn, ReleasePrefix, id, client, node))
		return
	}
	if !slices.Contains(h.o.Nodes, node) {
		fail(http.StatusForbidden, fmt.Sprintf("node %s is not in the spec of cluster %s", node, h.o.Cluster))
		return
	}
	rel, ok := ReleaseFilePath(id, node, file)
	if !ok {
		fail(http.StatusNotFound, fmt.Sprintf("no file %q in a release: one of %s", file, strings.Join(ReleaseFiles, ", ")))
		return
	}
	h.serveFile(sw, r, &a, fail, id, node, file, rel)
}

// serveFile opens rel below the releases directory (os.Root: no symbolic link leads
// outside it) and serves it with its ETag.
func (h *ReleaseHandler) serveFile(w http.ResponseWriter, r *http.Request, a *Access, fail func(int, string), id, node, file, rel string) {
	root, err := os.OpenRoot(h.o.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		fail(http.StatusNotFound, fmt.Sprintf("no release %s on this server (no releases yet)", id))
		return
	}
	if err != nil {
		fail(http.StatusInternalServerError, "releases directory: "+err.Error())
		return
	}
	defer root.Close()
	if fi, err := root.Stat(id); err != nil || !fi.IsDir() {
		fail(http.StatusNotFound, fmt.Sprintf("no release %s on this server", id))
		return
	}
	f, err := root.Open(rel)
	if errors.Is(err, fs.ErrNotExist) {
		fail(http.StatusNotFound, fmt.Sprintf("release %s has no %s for node %s", id, file, node))
		return
	}
	if err != nil {
		fail(http.StatusInternalServerError, fmt.Sprintf("release %s %s: %v", id, file, err))
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		fail(http.StatusNotFound, fmt.Sprintf("release %s has no %s for node %s", id, file, node))
		return
	}
	tag, err := h.etag(rel, f, fi)
	if err != nil {
		fail(http.StatusInternalServerError, fmt.Sprintf("release %s %s: %v", id, file, err))
		return
	}
	ctype := "application/octet-stream"
	if file == ReleaseManifest {
		ctype = "application/json"
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("ETag", tag)
	a.What = fmt.Sprintf("release %s %s of %s", id, file, node)
	if rg := r.Header.Get("Range"); rg != "" {
		a.What += " (" + rg + ")"
	}
	http.ServeContent(w, r, path.Base(rel), fi.ModTime(), f)
}

// etag is the file's strong ETag, "sha256-<hex>", computed once per file version (path,
// size and modification time) and shared by concurrent requests.
func (h *ReleaseHandler) etag(rel string, f *os.File, fi fs.FileInfo) (string, error) {
	k := etagKey{rel, fi.Size(), fi.ModTime().UnixNano()}
	h.mu.Lock()
	e := h.etags[k]
	if e == nil {
		e = &etagEntry{}
		h.etags[k] = e
	}
	h.mu.Unlock()
	e.once.Do(func() {
		sum := sha256.New()
		if _, err := io.Copy(sum, io.NewSectionReader(f, 0, fi.Size())); err != nil {
			e.err = err
			return
		}
		e.tag = `"sha256-` + hex.EncodeToString(sum.Sum(nil)) + `"`
	})
	if e.err != nil {
		h.mu.Lock()
		delete(h.etags, k) // try again next time
		h.mu.Unlock()
	}
	return e.tag, e.err
}

// statusWriter records the status and body bytes of a response for the access log.
type statusWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(p)
	s.n += int64(n)
	return n, err
}
