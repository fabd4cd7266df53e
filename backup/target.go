package backup

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/etcdbake/etcdbake/spec"
)

// Target is an S3-compatible bucket that snapshots are uploaded to (spec backup.target).
type Target struct {
	// Endpoint is the service's URL: https://host[:port] (http:// only where the network
	// is trusted, e.g. a test on loopback).
	Endpoint string
	Bucket   string
	// Prefix goes before each object's name (e.g. "prod/"); Region is the bucket's
	// region when the service needs one.
	Prefix string
	Region string
	// AccessKey and SecretKey sign the requests (AWS Signature V4).
	AccessKey, SecretKey string
	// CAFile, when set, is the PEM file of the CA that signed the endpoint's certificate.
	CAFile string
}

// TargetObject is one snapshot object in a target.
type TargetObject struct {
	Key      string    `json:"key"`
	Size     int64     `json:"size"`
	Modified time.Time `json:"modified"`
}

// ReadCredentials reads an S3 credentials file (spec.ParseS3Credentials).
func ReadCredentials(file string) (access, secret string, err error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", "", err
	}
	return spec.ParseS3Credentials(file, b)
}

// SpecTarget is the spec's backup.target as seen from the operator's machine (nil: none),
// with the credentials read from backup.target.credentialsFile.
func SpecTarget(t *spec.BackupTarget) (*Target, error) {
	if t == nil {
		return nil, nil
	}
	return target(t.Endpoint, t.Bucket, t.Prefix, t.Region, t.CredentialsFile, t.CA)
}

// NodeTarget is the target as a node sees it (its node config; nil: none).
func NodeTarget(t *spec.NodeBackupTarget) (*Target, error) {
	if t == nil {
		return nil, nil
	}
	return target(t.Endpoint, t.Bucket, t.Prefix, t.Region, t.CredentialsFile, t.CAFile)
}

func target(endpoint, bucket, prefix, region, credentialsFile, ca string) (*Target, error) {
	access, secret, err := ReadCredentials(credentialsFile)
	if err != nil {
		return nil, fmt.Errorf("the backup target's credentials: %w", err)
	}
	return &Target{Endpoint: endpoint, Bucket: bucket, Prefix: prefix, Region: region, AccessKey: access, SecretKey: secret, CAFile: ca}, nil
}

// String names the target as the errors do: the bucket and prefix at the endpoint.
func (t Target) String() string {
	return fmt.Sprintf("s3 bucket %s%s at %s", t.Bucket, strings.TrimSuffix("/"+t.Prefix, "/"), t.Endpoint)
}

func (t Target) client() (*minio.Client, error) {
	u, err := url.Parse(t.Endpoint)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("backup target endpoint %q: want https://HOST[:PORT]", t.Endpoint)
	}
	tr, err := minio.DefaultTransport(u.Scheme == "https")
	if err != nil {
		return nil, err
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("the backup target's CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("the backup target's CA %s holds no PEM certificate", t.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return minio.New(u.Host, &minio.Options{
		Creds:  credentials.NewStaticV4(t.AccessKey, t.SecretKey, ""),
		Secure: u.Scheme == "https", Region: t.Region, Transport: http.RoundTripper(tr),
	})
}

// Upload puts the snapshot file at the target as PREFIX + its base name (the content's MD5
// sent for the service to check) and returns the object's key.
func Upload(ctx context.Context, t Target, file string) (string, error) {
	cli, err := t.client()
	if err != nil {
		return "", err
	}
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return "", err
	}
	key := t.Prefix + filepath.Base(file)
	up, err := cli.PutObject(ctx, t.Bucket, key, f, info.Size(), minio.PutObjectOptions{
		ContentType: "application/x-tar", SendContentMd5: true})
	if err != nil {
		return "", fmt.Errorf("uploading %s to %s: %w", file, t, err)
	}
	if up.Size != info.Size() {
		return "", fmt.Errorf("uploading %s to %s: %d of %d bytes stored", file, t, up.Size, info.Size())
	}
	return key, nil
}

// ListTarget lists the snapshot objects of cluster in the target, newest first (their
// names sort by time).
func ListTarget(ctx context.Context, t Target, cluster string) ([]TargetObject, error) {
	cli, err := t.client()
	if err != nil {
		return nil, err
	}
	var out []TargetObject
	for o := range cli.ListObjects(ctx, t.Bucket, minio.ListObjectsOptions{Prefix: t.Prefix + cluster + "-"}) {
		if o.Err != nil {
			return nil, fmt.Errorf("listing %s: %w", t, o.Err)
		}
		if strings.HasSuffix(o.Key, spec.SnapshotExt) && !strings.Contains(strings.TrimPrefix(o.Key, t.Prefix), "/") {
			out = append(out, TargetObject{Key: o.Key, Size: o.Size, Modified: o.LastModified})
		}
	}
	slices.SortFunc(out, func(a, b TargetObject) int { return strings.Compare(path.Base(b.Key), path.Base(a.Key)) })
	return out, nil
}

// PruneTarget keeps the keep newest snapshot objects of cluster in the target and removes
// the others; objects of other names are never touched. It returns the removed keys.
func PruneTarget(ctx context.Context, t Target, cluster string, keep int) ([]string, error) {
	objs, err := ListTarget(ctx, t, cluster)
	if err != nil {
		return nil, err
	}
	cli, err := t.client()
	if err != nil {
		return nil, err
	}
	var removed []string
	for i, o := range objs {
		if i < keep {
			continue
		}
		if err := cli.RemoveObject(ctx, t.Bucket, o.Key, minio.RemoveObjectOptions{}); err != nil {
			return removed, fmt.Errorf("removing %s from %s: %w", o.Key, t, err)
		}
		removed = append(removed, o.Key)
	}
	return removed, nil
}

// Download fetches the object key from the target into file (created, mode 0600; never
// over an existing file).
func Download(ctx context.Context, t Target, key, file string) error {
	cli, err := t.client()
	if err != nil {
		return err
	}
	obj, err := cli.GetObject(ctx, t.Bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return fmt.Errorf("fetching %s from %s: %w", key, t, err)
	}
	defer obj.Close()
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.ReadFrom(obj); err != nil {
		f.Close()
		os.Remove(file)
		return fmt.Errorf("fetching %s from %s: %w", key, t, err)
	}
	return f.Close()
}
