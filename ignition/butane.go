package ignition

import (
	"fmt"
	"os"
	"path/filepath"

	butane "github.com/coreos/butane/config"
	"github.com/coreos/butane/config/common"
	v34 "github.com/coreos/ignition/v2/config/v3_4"
	"github.com/coreos/ignition/v2/config/v3_4/types"
)

// ReadFragment reads a Butane fragment from a file.
func ReadFragment(path string) (Fragment, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Fragment{}, fmt.Errorf("butane fragment: %w", err)
	}
	return Fragment{Source: path, Dir: filepath.Dir(path), Data: data}, nil
}

// translateFragment turns a Butane document into an Ignition 3.4 config with Butane's own
// translator. Fragments must use a variant/version that produces Ignition 3.4 or older
// (fcos 1.0.0-1.5.0, flatcar 1.0.0-1.1.0).
func translateFragment(f Fragment) (types.Config, error) {
	ign, rep, err := butane.TranslateBytes(f.Data, common.TranslateBytesOptions{
		TranslateOptions: common.TranslateOptions{FilesDir: f.Dir},
	})
	if err != nil {
		if len(rep.Entries) > 0 {
			return types.Config{}, fmt.Errorf("butane fragment %s: %w\n%s", f.Source, err, rep.String())
		}
		return types.Config{}, fmt.Errorf("butane fragment %s: %w (it needs `variant: fcos` with `version: 1.5.0` or `variant: flatcar` with `version: 1.1.0`)", f.Source, err)
	}
	if rep.IsFatal() {
		return types.Config{}, fmt.Errorf("butane fragment %s:\n%s", f.Source, rep.String())
	}
	cfg, _, err := v34.ParseCompatibleVersion(ign)
	if err != nil {
		return types.Config{}, fmt.Errorf("butane fragment %s translates to an Ignition version newer than %s: use `variant: fcos` `version: 1.5.0` (or older) or `variant: flatcar` `version: 1.1.0`: %w", f.Source, Version, err)
	}
	return cfg, nil
}
