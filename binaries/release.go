package binaries

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path"
	"strings"
	"time"

	"github.com/etcdbake/etcdbake/spec"
)

// Release download bases. An asset is fetched from <base>/<version>/<asset>, so a
// mirror given in binaries.etcdReleaseURL / flannelReleaseURL must keep GitHub's
// "releases/download" layout below its base.
const (
	DefaultEtcdReleaseURL    = "https://github.com/etcd-io/etcd/releases/download"
	DefaultFlannelReleaseURL = "https://github.com/flannel-io/flannel/releases/download"
)

// etcd publishes etcd-<v>-linux-amd64.tar.gz (holding etcd-<v>-linux-amd64/etcd and
// etcdctl) and SHA256SUMS listing every asset.
const etcdSums = "SHA256SUMS"

// flannel publishes the bare binary flanneld-amd64 (and flannel-<v>-linux-amd64.tar.gz).
// The name of its checksum asset is not documented; these are tried in order, and
// without a checksum the release source refuses flanneld (it never trusts an unverified
// download).
var flannelSums = []string{"sha256sum.txt", "SHA256SUMS"}

const (
	flannelAsset = "flanneld-amd64"
	maxSums      = 1 << 20
	maxArchive   = 1 << 30
	// downloadTimeout bounds one whole download, so a stalled server cannot hang fetch.
	downloadTimeout = 15 * time.Minute
)

var errHTTPNotFound = errors.New("not found")

// httpClient fails fast when the host is unreachable (short connect and TLS timeouts)
// but lets a slow, progressing download finish.
var httpClient = &http.Client{
	Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       30 * time.Second,
	},
}

func releaseBase(configured, def string) string {
	if configured == "" {
		configured = def
	}
	return strings.TrimRight(configured, "/")
}

func (f *fetcher) release(ctx context.Context, name, version string) (candidate, error) {
	if name == "flanneld" {
		return f.flannelRelease(ctx, version)
	}
	m := f.memo["etcd-release"]
	if m == nil {
		m = &memo{}
		m.path, m.detail, m.err = f.etcdArchive(ctx, version)
		f.memo["etcd-release"] = m
	}
	if m.err != nil {
		return candidate{}, m.err
	}
	dir := fmt.Sprintf("etcd-%s-linux-amd64", version)
	tmp := f.tempPath(name)
	if err := extractFromTarGz(m.path, dir+"/"+name, tmp); err != nil {
		return candidate{}, err
	}
	return candidate{path: tmp, source: spec.SourceRelease, detail: m.detail}, nil
}

// etcdArchive downloads the etcd release archive into the work directory and checks it
// against the published SHA256SUMS.
func (f *fetcher) etcdArchive(ctx context.Context, version string) (string, string, error) {
	base := releaseBase(f.cl.Binary.EtcdReleaseURL, DefaultEtcdReleaseURL)
	asset := fmt.Sprintf("etcd-%s-linux-amd64.tar.gz", version)
	sumsURL := base + "/" + version + "/" + etcdSums
	sums, err := getSmall(ctx, sumsURL)
	if err != nil {
		return "", "", err
	}
	want, err := findSum(sums, asset)
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", sumsURL, err)
	}
	url := base + "/" + version + "/" + asset
	tmp := f.tempPath("etcd-archive")
	var got string
	err = Timed(f.c.Progress, fmt.Sprintf("etcd %s: downloading %s", version, url), func() (err error) {
		got, err = download(ctx, url, tmp, maxArchive)
		return err
	})
	if err != nil {
		return "", "", err
	}
	if got != want {
		os.Remove(tmp)
		return "", "", &ChecksumError{Name: "etcd and etcdctl", Source: spec.SourceRelease, File: url, Expected: want, From: sumsURL, Actual: got}
	}
	return tmp, fmt.Sprintf("%s (sha256 %s, verified against %s)", url, got, sumsURL), nil
}

func (f *fetcher) flannelRelease(ctx context.Context, version string) (candidate, error) {
	base := releaseBase(f.cl.Binary.FlannelReleaseURL, DefaultFlannelReleaseURL)
	var want, sumsURL string
	var tried []string
	for _, s := range flannelSums {
		u := base + "/" + version + "/" + s
		sums, err := getSmall(ctx, u)
		if errors.Is(err, errHTTPNotFound) {
			tried = append(tried, s)
			continue
		}
		if err != nil {
			return candidate{}, err
		}
		if want, err = findSum(sums, flannelAsset); err != nil {
			return candidate{}, fmt.Errorf("%s: %w", u, err)
		}
		sumsURL = u
		break
	}
	if sumsURL == "" {
		return candidate{}, fmt.Errorf("flannel %s publishes no checksum under %s/%s/ (tried %s), so its download cannot be verified: use source go, or source file with a sha256 you checked", version, base, version, strings.Join(tried, ", "))
	}
	url := base + "/" + version + "/" + flannelAsset
	tmp := f.tempPath("flanneld")
	if err := Timed(f.c.Progress, fmt.Sprintf("flanneld %s: downloading %s", version, url), func() error {
		_, err := download(ctx, url, tmp, maxBinary)
		return err
	}); err != nil {
		return candidate{}, err
	}
	return candidate{path: tmp, source: spec.SourceRelease, detail: url, expected: want, from: sumsURL}, nil
}

func get(ctx context.Context, url string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "etcdbake")
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			return nil, fmt.Errorf("GET %s: %w (HTTP 404)", url, errHTTPNotFound)
		}
		return nil, fmt.Errorf("GET %s: HTTP %s", url, resp.Status)
	}
	return resp, nil
}

func getSmall(ctx context.Context, url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	resp, err := get(ctx, url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxSums+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if len(data) > maxSums {
		return nil, fmt.Errorf("GET %s: larger than %d bytes, not a checksum list", url, maxSums)
	}
	return data, nil
}

// download writes url to a new file at dst (removed again on any error, so a partial
// download is never left behind) and returns its sha256.
func download(ctx context.Context, url, dst string, limit int64) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, downloadTimeout)
	defer cancel()
	resp, err := get(ctx, url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	sum, err := copyToFile(dst, resp.Body, limit)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", url, err)
	}
	return sum, nil
}

// findSum returns the sha256 that a sha256sum-style list gives for file (matched by
// base name; "*name" binary-mode lines are accepted).
func findSum(list []byte, file string) (string, error) {
	var found string
	sc := bufio.NewScanner(bytes.NewReader(list))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 {
			continue
		}
		sum, name := strings.ToLower(fields[0]), strings.TrimPrefix(fields[1], "*")
		if path.Base(name) != file {
			continue
		}
		if !isSHA256(sum) {
			return "", fmt.Errorf("the checksum of %s is %q, not a sha256", file, fields[0])
		}
		if found != "" && found != sum {
			return "", fmt.Errorf("%s is listed twice with different checksums", file)
		}
		found = sum
	}
	if found == "" {
		return "", fmt.Errorf("no checksum listed for %s", file)
	}
	return found, nil
}

// extractFromTarGz copies the regular file member (a path inside the archive) to dst.
func extractFromTarGz(archive, member, dst string) error {
	f, err := os.Open(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("release archive: %w", err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return fmt.Errorf("release archive has no %s", member)
		}
		if err != nil {
			return fmt.Errorf("release archive: %w", err)
		}
		if path.Clean(strings.TrimPrefix(h.Name, "./")) != member {
			continue
		}
		if h.Typeflag != tar.TypeReg {
			return fmt.Errorf("release archive: %s is not a regular file", member)
		}
		if _, err := copyToFile(dst, tr, maxBinary); err != nil {
			return fmt.Errorf("release archive: %s: %w", member, err)
		}
		return nil
	}
}
