package firstboot

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdbake/etcdbake/spec"
)

// Summary says what the fallback was, from the slot that booted instead.
func (f *BootFallback) Summary(booted string) string {
	return fmt.Sprintf("slot %s (generation %d, %s) failed its trial; this boot fell back to slot %s", f.Slot, f.Generation, f.Entry, orNone(booted))
}

// Reason is why the slot failed, as far as this node recorded it.
func (f *BootFallback) Reason() string {
	if v := f.Verify; v != nil {
		return fmt.Sprintf("verify-boot %s at %s: %s", v.Result, v.Started.Format(time.RFC3339), v.Message)
	}
	return "no verify-boot result was recorded for it (it never reached verify-boot, or was killed before recording)"
}

// BootRecord is what this node publishes about its boot (nil on a machine without A/B
// slots, e.g. Fedora CoreOS).
func (a *Agent) BootRecord() (*spec.NodeRecord, error) {
	st, err := a.ReadStatus()
	if err != nil {
		return nil, err
	}
	b := st.Boot
	if b == nil || b.Slot == "" {
		return nil, nil
	}
	r := &spec.NodeRecord{Node: a.Cfg.Name, Slot: b.Slot, Release: b.Release, Entry: b.Entry, State: b.State, Updated: a.now().UTC()}
	if v := st.Verify; v != nil {
		r.Verify = v.Result + ": " + v.Message
	}
	if f := b.Fallback; f != nil {
		r.Fallback = f.Summary(b.Slot) + "; " + f.Reason()
	}
	return r, nil
}

// PublishBoot puts this node's record under spec.NodeRecordPrefix, so that `etcdbake
// status` shows each node's slot, release and fallback from the workstation.
func (a *Agent) PublishBoot(ctx context.Context, cli *clientv3.Client) error {
	r, err := a.BootRecord()
	if err != nil {
		return err
	}
	return a.publishRecord(ctx, cli, r)
}

// publishRecord puts a boot record (nil: nothing to publish) under spec.NodeRecordPrefix.
func (a *Agent) publishRecord(ctx context.Context, cli *clientv3.Client, r *spec.NodeRecord) error {
	if r == nil {
		return nil
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = withTimeout(ctx, 2*a.dialTimeout(), func(c context.Context) (*clientv3.PutResponse, error) {
		return cli.Put(c, spec.NodeRecordKey(a.Cfg.Name), string(b))
	})
	return err
}
