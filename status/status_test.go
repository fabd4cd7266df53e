package status

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcdbake/etcdbake/internal/testcluster"
	"github.com/etcdbake/etcdbake/pki"
	"github.com/etcdbake/etcdbake/spec"
)

// TestStatusAgainstRealCluster starts a real 3-member etcd (embed) with mutual TLS from
// the project's PKI and reads its status with the admin certificate; then a client
// certificate from another CA must be rejected.
func TestStatusAgainstRealCluster(t *testing.T) {
	c := testcluster.Spec(t, "status", 3, 11)
	tc := testcluster.StartAll(t, c)
	ca, crt, key := tc.ClientFiles("admin")

	ctx := context.Background()
	// A flannel lease as flanneld writes it, for member m2's address.
	tlsCfg, err := TLSConfig(ca, crt, key)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.ClientEndpoints(), TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "/coreos.com/network/subnets/10.244.7.0-24", `{"PublicIP":"`+c.Nodes[1].IP().String()+`","BackendType":"vxlan"}`); err != nil {
		t.Fatal(err)
	}
	// Boot records as etcd-firstboot publishes them: m1's; one under m3's key that names
	// another node (ignored).
	rec := spec.NodeRecord{Node: "m1", Slot: "b", Release: "0123456789ab", Entry: "etcdbake-000001-b.conf", State: "good", Fallback: ""}
	rb, _ := json.Marshal(rec)
	if _, err := cli.Put(ctx, spec.NodeRecordKey("m1"), string(rb)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, spec.NodeRecordKey("m3"), `{"node":"m2","slot":"a"}`); err != nil {
		t.Fatal(err)
	}
	st, err := Collect(ctx, c, Options{CAFile: ca, CertFile: crt, KeyFile: key, PKIDir: tc.PKIDir, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range st.Members {
		if (m.Name == "m1") != (m.Boot != nil) || m.Boot != nil && *m.Boot != rec {
			t.Errorf("member %s: boot record %+v, want m1's only: %+v", m.Name, m.Boot, rec)
		}
	}
	if len(st.Flannel) != 1 || st.Flannel[0] != (Lease{Subnet: "10.244.7.0/24", PublicIP: c.Nodes[1].IP().String(), Node: "m2"}) {
		t.Errorf("flannel leases: %+v", st.Flannel)
	}
	if len(st.Members) != 3 || !st.Quorum || st.Leader == "" {
		t.Fatalf("want 3 members with quorum and a leader, got %+v", st)
	}
	leaders := 0
	for i, m := range st.Members {
		want := c.Nodes[i]
		if m.Name != want.Name || m.Endpoint != c.ClientURL(want) {
			t.Errorf("member %d: %s at %s, want %s at %s", i, m.Name, m.Endpoint, want.Name, c.ClientURL(want))
		}
		if !m.Healthy || m.Version != "3.6.16" || m.Learner || m.RaftTerm == 0 || m.RaftIndex == 0 || m.DBSize == 0 {
			t.Errorf("member %s: %+v", m.Name, m)
		}
		if m.CertDaysLeft == nil || *m.CertDaysLeft < 363 || *m.CertDaysLeft > 365 {
			t.Errorf("member %s: cert days left %v, want ~364 for a fresh 1y certificate", m.Name, m.CertDaysLeft)
		}
		if m.Leader {
			leaders++
		}
	}
	if leaders != 1 {
		t.Errorf("%d leaders", leaders)
	}
	for _, m := range st.Members {
		if m.DBSizeInUse <= 0 || m.DBSizeInUse > m.DBSize || m.QuotaPercent <= 0 || m.QuotaPercent > 1 {
			t.Errorf("member %s: in use %d of %d, %.3f%% of the 2 GiB quota", m.Name, m.DBSizeInUse, m.DBSize, m.QuotaPercent)
		}
	}
	if len(st.Alarms) != 0 || len(st.Warnings) != 0 {
		t.Errorf("a fresh cluster has alarms %v or warnings %v", st.Alarms, st.Warnings)
	}

	// A NOSPACE alarm raised on m2 (through etcd's own alarm API: etcd then refuses
	// writes), a quota the databases are near, certificates within renewBefore: each is
	// a warning; disarmed, the alarm is gone.
	ml, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var m2 uint64
	for _, m := range ml.Members {
		if m.Name == "m2" {
			m2 = m.ID
		}
	}
	if _, err := pb.NewMaintenanceClient(cli.ActiveConnection()).Alarm(ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: m2, Alarm: pb.AlarmType_NOSPACE}); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "/refused", "x"); err == nil {
		t.Fatal("etcd took a write under NOSPACE: the alarm was not raised")
	}
	near := *c
	near.Etcd.QuotaBackendBytes = st.Members[0].DBSize * 100 / 85
	near.PKI.RenewBefore = spec.Dur(400 * 24 * time.Hour)
	near.PKI.RenewBefore.Raw = "400d"
	st, err = Collect(ctx, &near, Options{CAFile: ca, CertFile: crt, KeyFile: key, PKIDir: tc.PKIDir, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Quorum {
		t.Errorf("under an alarm the members still answer with a leader: quorum %v", st.Quorum)
	}
	if len(st.Alarms) != 1 || st.Alarms[0] != (Alarm{Member: "m2", Alarm: "NOSPACE"}) {
		t.Errorf("alarms %+v, want m2's NOSPACE", st.Alarms)
	}
	all := strings.Join(st.Warnings, "\n")
	for _, w := range []string{"m2: alarm NOSPACE raised: the cluster takes no writes", "m1: the database is 8", "% of the quota", "m3: its certificates expire in 36", "(pki.renewBefore 400d): etcdbake pki --renew"} {
		if !strings.Contains(all, w) {
			t.Errorf("warnings lack %q:\n%s", w, all)
		}
	}
	if _, err := cli.AlarmDisarm(ctx, &clientv3.AlarmMember{MemberID: m2, Alarm: pb.AlarmType_NOSPACE}); err != nil {
		t.Fatal(err)
	}
	if st, err = Collect(ctx, c, Options{CAFile: ca, CertFile: crt, KeyFile: key, Timeout: 5 * time.Second}); err != nil || len(st.Alarms) != 0 || len(st.Warnings) != 0 {
		t.Errorf("after disarming: %v, alarms %v, warnings %v", err, st.Alarms, st.Warnings)
	}

	// The newest scheduled snapshot: shown; two periods old (the period from the node's
	// timer: taken -> next due), a warning.
	now := time.Now().UTC().Truncate(time.Second)
	for _, tcase := range []struct {
		taken, due time.Duration
		warn       string
	}{
		{-time.Hour, 5 * time.Hour, ""},
		{-13 * time.Hour, -7 * time.Hour, "the newest scheduled snapshot is 13h0m0s old (taken by m1, the schedule runs about every 6h0m0s)"},
	} {
		rec := spec.SnapshotRecord{Node: "m1", File: "/var/lib/etcdbake/snapshots/x.snapshot.tar", Taken: now.Add(tcase.taken), NextDue: now.Add(tcase.due), Revision: 7}
		b, _ := json.Marshal(rec)
		if _, err := cli.Put(ctx, spec.SnapshotRecordKey, string(b)); err != nil {
			t.Fatal(err)
		}
		st, err = Collect(ctx, c, Options{CAFile: ca, CertFile: crt, KeyFile: key, Timeout: 5 * time.Second, Now: now})
		if err != nil || st.Snapshot == nil || !st.Snapshot.Taken.Equal(rec.Taken) || st.Snapshot.Node != "m1" {
			t.Fatalf("the newest snapshot: %v, %+v", err, st.Snapshot)
		}
		if all := strings.Join(st.Warnings, "\n"); tcase.warn == "" && all != "" || tcase.warn != "" && !strings.Contains(all, tcase.warn) {
			t.Errorf("snapshot taken %s, due %s: warnings %q, want %q", tcase.taken, tcase.due, all, tcase.warn)
		}
	}

	// With one member down, the others still report quorum and the stopped one is unhealthy.
	tc.Stop("m3")
	st, err = Collect(ctx, c, Options{CAFile: ca, CertFile: crt, KeyFile: key, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Quorum || st.Members[2].Healthy || st.Members[2].Error == "" {
		t.Errorf("after stopping m3: quorum %v, m3 %+v", st.Quorum, st.Members[2])
	}

	// A client certificate from another CA is rejected by every member.
	otherDir := filepath.Join(t.TempDir(), "pki")
	if _, err := pki.Ensure(c, otherDir, time.Now()); err != nil {
		t.Fatal(err)
	}
	foreignCrt, foreignKey := pki.ClientCertPath(otherDir, "admin")
	_, err = Collect(ctx, c, Options{CAFile: ca, CertFile: foreignCrt, KeyFile: foreignKey, Timeout: 2 * time.Second})
	if err == nil {
		t.Fatal("a client certificate from another CA was accepted")
	}
	if !strings.Contains(err.Error(), "rejected this client's certificate") {
		t.Errorf("error does not say the client certificate was rejected: %v", err)
	}
	// And trusting the other CA (wrong server CA) fails too, saying so.
	otherCA, _ := pki.CAPath(otherDir, "ca")
	_, err = Collect(ctx, c, Options{CAFile: otherCA, CertFile: crt, KeyFile: key, Timeout: 2 * time.Second})
	if err == nil {
		t.Fatal("a server certificate from an untrusted CA was accepted")
	}
	if !strings.Contains(err.Error(), "not the CA in "+otherCA) || !strings.Contains(err.Error(), `issued by "CN=status etcd CA`) {
		t.Errorf("error does not name the CA file and the issuer: %v", err)
	}
}
