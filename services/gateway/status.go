package gateway

import (
	"bytes"
	_ "embed"
	"html/template"
	"net/http"
	"strings"
	"time"
)

//go:embed status.html
var statusHTML string

var statusTemplate = template.Must(template.New("status").Funcs(template.FuncMap{
	"join": strings.Join,
	"pct":  func(f float64) float64 { return 100 * f },
	"fmtTime": func(v any) string {
		var t time.Time
		switch x := v.(type) {
		case time.Time:
			t = x
		case *time.Time:
			if x == nil {
				return ""
			}
			t = *x
		}
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
}).Parse(statusHTML))

// serveStatus is the status page at /: every endpoint with its health,
// breaker, latency, error rate and last error. It re-renders itself when a
// status change arrives on /status/events.
func (g *Gateway) serveStatus(w http.ResponseWriter, _ *http.Request) {
	var buf bytes.Buffer
	err := statusTemplate.Execute(&buf, struct {
		Instance  string
		Now       string
		Endpoints []EndpointInfo
	}{g.cfg.Gateway.Instance, g.now().UTC().Format("2006-01-02 15:04:05Z"), g.endpoints()})
	if err != nil {
		g.log.Error("render status page", "err", err)
		http.Error(w, "render status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.Write(buf.Bytes())
}
