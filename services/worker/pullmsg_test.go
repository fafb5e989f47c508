package worker

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"
)

func TestAckMetadata(t *testing.T) {
	tests := []struct {
		name    string
		subject string
		want    *jetstream.MsgMetadata
	}{
		{name: "v1", subject: "$JS.ACK.SWITCHBOARD_JOBS.workers-normal.2.17.42.1700000000000000001.5",
			want: &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: 17, Consumer: 42}, NumDelivered: 2, NumPending: 5,
				Timestamp: time.Unix(0, 1700000000000000001), Stream: "SWITCHBOARD_JOBS", Consumer: "workers-normal"}},
		{name: "v2 without domain", subject: "$JS.ACK._.ACCHASH.SWITCHBOARD_JOBS.workers-high.1.3.4.1700000000000000002.0.rnd",
			want: &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: 3, Consumer: 4}, NumDelivered: 1, NumPending: 0,
				Timestamp: time.Unix(0, 1700000000000000002), Stream: "SWITCHBOARD_JOBS", Consumer: "workers-high"}},
		{name: "v2 with domain", subject: "$JS.ACK.hub.ACCHASH.S.C.1.3.4.5.6",
			want: &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: 3, Consumer: 4}, NumDelivered: 1, NumPending: 6,
				Timestamp: time.Unix(0, 5), Stream: "S", Consumer: "C", Domain: "hub"}},
		{name: "not an ack subject", subject: "_INBOX.abc"},
		{name: "too few tokens", subject: "$JS.ACK.S.C.1.2.3"},
		{name: "not a number", subject: "$JS.ACK.S.C.x.2.3.4.5"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ackMetadata(tc.subject)
			if (err != nil) != (tc.want == nil) {
				t.Fatalf("ackMetadata(%q) error %v, want error: %v", tc.subject, err, tc.want == nil)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ackMetadata(%q) (-want +got):\n%s", tc.subject, diff)
			}
		})
	}
}
