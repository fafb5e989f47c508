package gateway

import (
	"encoding/json"
	"net/http"
	"slices"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
)

// modelsBody is the GET /v1/models answer (OpenAI list format): the union
// of every endpoint's models and aliases, built once.
func modelsBody(models ModelSet, created int64) []byte {
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	list := struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}{Object: "list", Data: []model{}}
	for _, m := range models.Sorted() {
		list.Data = append(list.Data, model{ID: m, Object: "model", Created: created, OwnedBy: "switchboard"})
	}
	b, _ := json.Marshal(list)
	return append(b, '\n')
}

func (g *Gateway) serveModels(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	w.Write(g.modelsJSON)
}

// EndpointInfo is one row of GET /v1/endpoints: an endpoint's configuration
// (never its API key) and its current state record (nil before the
// evaluator wrote one).
type EndpointInfo struct {
	Name          string            `json:"name"`
	Configured    bool              `json:"configured"`
	BaseURL       string            `json:"base_url,omitempty"`
	Models        []string          `json:"models,omitempty"`
	Aliases       map[string]string `json:"aliases,omitempty"`
	Weight        float64           `json:"weight,omitempty"`
	Tier          int               `json:"tier,omitempty"`
	PricePerMTok  float64           `json:"price_per_mtok,omitempty"`
	QuotaGroup    string            `json:"quota_group,omitempty"`
	HealthPath    string            `json:"health_path,omitempty"`
	Probes        []string          `json:"probes,omitempty"`
	CheckInterval string            `json:"check_interval,omitempty"`
	Timeout       string            `json:"timeout,omitempty"`
	// HasAPIKey says whether a key is configured; the key never leaves
	// the config.
	HasAPIKey bool                  `json:"has_api_key"`
	State     *events.EndpointState `json:"state"`
}

// endpoints lists every configured endpoint in config order, then any
// endpoint that has a state record but is no longer configured.
func (g *Gateway) endpoints() []EndpointInfo {
	states := g.view.Snapshot()
	out := make([]EndpointInfo, 0, len(g.cfg.Endpoints))
	for _, ep := range g.cfg.Endpoints {
		out = append(out, endpointInfo(ep, states))
		delete(states, ep.Name)
	}
	var rest []string
	for name := range states {
		rest = append(rest, name)
	}
	slices.Sort(rest)
	for _, name := range rest {
		st := states[name]
		out = append(out, EndpointInfo{Name: name, State: &st})
	}
	return out
}

func endpointInfo(ep config.Endpoint, states map[string]events.EndpointState) EndpointInfo {
	info := EndpointInfo{
		Name: ep.Name, Configured: true, BaseURL: ep.BaseURL, Models: ep.Models, Aliases: ep.Aliases,
		Weight: ep.Weight, Tier: ep.Tier, PricePerMTok: ep.PricePerMTok, QuotaGroup: ep.QuotaGroup,
		HealthPath: ep.HealthPath, Probes: ep.Probes, HasAPIKey: ep.APIKey.IsSet(),
	}
	if ep.CheckInterval > 0 {
		info.CheckInterval = ep.CheckInterval.String()
	}
	if ep.Timeout > 0 {
		info.Timeout = ep.Timeout.String()
	}
	if st, ok := states[ep.Name]; ok {
		info.State = &st
	}
	return info
}

func (g *Gateway) serveEndpoints(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, struct {
		Object string         `json:"object"`
		Data   []EndpointInfo `json:"data"`
	}{"list", g.endpoints()})
}
