package mock

import (
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"time"
)

// ErrInvalidConfig is wrapped by every configuration error from [New].
var ErrInvalidConfig = errors.New("invalid mock config")

// Defaults applied by [New] to zero fields.
const (
	DefaultName         = "mock"
	DefaultStreamChunks = 4
)

// DefaultModels are served when Config.Models is empty.
var DefaultModels = []string{"mock-small", "mock-large"}

// Config configures a mock endpoint. Zero fields take defaults.
type Config struct {
	// Name is sent in the X-Mock-Endpoint header and in every reply's content.
	// Printable ASCII; default "mock".
	Name string
	// Models are the model ids served; any other model gets 404 model_not_found.
	Models []string
	// APIKey, if set, is required as "Authorization: Bearer <key>" on every
	// route except health (including the admin API). It is never echoed.
	APIKey string
	// Seed makes fault injection reproducible.
	Seed int64
	// Faults are the initial faults; change them later with SetFaults or the admin API.
	Faults Faults
	// StreamChunks is the number of content chunks in a streamed reply
	// (default 4); StreamDelay is the pause before each of them (default 0).
	StreamChunks int
	StreamDelay  time.Duration
	// Now is the clock for outage schedules, which are measured from the time
	// New was called. Default time.Now.
	Now func() time.Time
	// Logger receives fault changes made through the admin API and server
	// errors. Default: discard.
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Name == "" {
		c.Name = DefaultName
	}
	if len(c.Models) == 0 {
		c.Models = DefaultModels
	}
	c.Models = append([]string(nil), c.Models...) // the caller keeps its slice
	if c.StreamChunks == 0 {
		c.StreamChunks = DefaultStreamChunks
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate checks c after defaults were applied. Errors never contain the API key.
func (c *Config) Validate() error {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	if !printableASCII(c.Name) {
		bad("name %q must be printable ASCII", c.Name)
	}
	seen := make(map[string]bool, len(c.Models))
	for i, m := range c.Models {
		switch {
		case m == "":
			bad("models[%d] is empty", i)
		case seen[m]:
			bad("model %q is listed twice", m)
		}
		seen[m] = true
	}
	if c.APIKey != "" && !printableASCII(c.APIKey) {
		bad("api key must be printable ASCII") // do not quote the key
	}
	if c.StreamChunks < 0 || c.StreamChunks > 10000 {
		bad("stream chunks %d is outside 1..10000", c.StreamChunks)
	}
	if c.StreamDelay < 0 {
		bad("stream delay %s is negative", c.StreamDelay)
	}
	if err := c.Faults.Validate(); err != nil {
		bad("%v", err)
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrInvalidConfig, strings.Join(problems, "; "))
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// Fast is a healthy endpoint answering in 5-20 ms.
func Fast(name string) Config {
	return Config{
		Name: name,
		Seed: seedFor(name),
		Faults: Faults{
			LatencyMin: Duration(5 * time.Millisecond),
			LatencyMax: Duration(20 * time.Millisecond),
		},
	}
}

// Slow is a healthy endpoint answering in 800-1500 ms.
func Slow(name string) Config {
	return Config{
		Name: name,
		Seed: seedFor(name),
		Faults: Faults{
			LatencyMin: Duration(800 * time.Millisecond),
			LatencyMax: Duration(1500 * time.Millisecond),
		},
		StreamDelay: 50 * time.Millisecond,
	}
}

// Flaky is an endpoint that fails about half of its requests and health
// checks with 503, throttles some with 429, and is down for 20 s of every
// minute (starting 20 s after it starts), so probes show failures within seconds.
func Flaky(name string) Config {
	return Config{
		Name: name,
		Seed: seedFor(name),
		Faults: Faults{
			LatencyMin:    Duration(20 * time.Millisecond),
			LatencyMax:    Duration(250 * time.Millisecond),
			ErrorRate:     0.5,
			ErrorStatus:   503,
			RateLimitRate: 0.1,
			RetryAfter:    Duration(2 * time.Second),
			Outages: []Outage{{
				Every:  Duration(60 * time.Second),
				For:    Duration(20 * time.Second),
				Offset: Duration(20 * time.Second),
			}},
		},
	}
}

// seedFor gives each preset endpoint its own, stable fault sequence.
func seedFor(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return int64(h.Sum64() >> 1)
}
