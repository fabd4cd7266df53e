//go:build !unix

package fileutil

import "context"

// Lock is a no-op where flock is not available: writes stay atomic, but two concurrent
// writers of one cache entry are not serialised.
func Lock(ctx context.Context, path string, onWait func()) (unlock func(), err error) {
	return func() {}, ctx.Err()
}
