package events_test

import (
	"testing"

	"github.com/switchboard-llm/switchboard/events"
)

// BenchmarkCodec measures what one event costs on the hot paths: encoding,
// decoding with Go-level checks (interactive lane) and with the JSON Schema
// too (evaluator, gateway edge).
func BenchmarkCodec(b *testing.B) {
	for _, name := range []string{"job_submitted", "probe_result", "status_changed"} {
		g := golden()[name]
		body, err := events.Encode("/bench", g.id, g.p)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name+"/encode", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := events.Encode("/bench", g.id, g.p); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/decode", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := events.Decode(body); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/decode+schema", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := strict.Decode(body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
