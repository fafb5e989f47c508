package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

// Problem is one thing wrong with a config file.
type Problem struct {
	Line  int    // 1-based; 0 when unknown
	Field string // e.g. "endpoints[1].base_url"
	Msg   string
}

// Error lists every problem of a config file.
type Error struct {
	File     string
	Problems []Problem
}

func (e *Error) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.File)
		if p.Line > 0 {
			fmt.Fprintf(&b, ":%d", p.Line)
		}
		b.WriteString(": ")
		if p.Field != "" {
			b.WriteString(p.Field)
			b.WriteString(": ")
		}
		b.WriteString(p.Msg)
	}
	return b.String()
}

// Load reads, defaults, expands and validates the config file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data, os.LookupEnv)
}

// LookupEnv looks up an environment variable (os.LookupEnv in production).
type LookupEnv func(string) (string, bool)

// Parse is Load on bytes: name is the file name errors carry; env resolves
// ${VAR} references.
func Parse(name string, data []byte, env LookupEnv) (*Config, error) {
	file, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil, &Error{File: name, Problems: []Problem{yamlProblem(nil, err)}}
	}
	c := &Config{}
	dec := yaml.NewDecoder(bytes.NewReader(data), yaml.DisallowUnknownField())
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return nil, &Error{File: name, Problems: []Problem{decodeProblem(file, err)}}
	}
	c.File = name
	var v validator
	v.env = env
	c.expand(&v)
	c.setDefaults()
	c.validate(&v)
	if len(v.problems) == 0 {
		return c, nil
	}
	for i := range v.problems {
		v.problems[i].Line = lineOf(file, v.problems[i].Field)
	}
	sort.SliceStable(v.problems, func(i, j int) bool { return v.problems[i].Line < v.problems[j].Line })
	return nil, &Error{File: name, Problems: v.problems}
}

var durationErrRE = regexp.MustCompile(`^time: invalid duration "(.*)"$`)

// decodeProblem turns a decode error into a Problem. The YAML library reports
// a bad duration without its position, so it is located in the AST by value.
func decodeProblem(file *ast.File, err error) Problem {
	m := durationErrRE.FindStringSubmatch(err.Error())
	if m == nil {
		return yamlProblem(file, err)
	}
	p := Problem{Msg: fmt.Sprintf("%q is not a duration (use e.g. 500ms, 30s, 5m)", m[1])}
	for _, doc := range file.Docs {
		ast.Walk(visitorFunc(func(n ast.Node) bool {
			if p.Line != 0 {
				return false
			}
			if sn, ok := n.(ast.ScalarNode); ok && fmt.Sprint(sn.GetValue()) == m[1] {
				p.Line = n.GetToken().Position.Line
				p.Field = strings.TrimPrefix(n.GetPath(), "$.")
				return false
			}
			return true
		}), doc)
	}
	return p
}

type visitorFunc func(ast.Node) bool

func (f visitorFunc) Visit(n ast.Node) ast.Visitor {
	if f(n) {
		return f
	}
	return nil
}

var yamlPrefixRE = regexp.MustCompile(`^\[\d+:\d+\]\s*`)

func yamlProblem(file *ast.File, err error) Problem {
	var ye yaml.Error
	if !errors.As(err, &ye) {
		return Problem{Msg: err.Error()}
	}
	p := Problem{Msg: yamlPrefixRE.ReplaceAllString(ye.GetMessage(), "")}
	tk := ye.GetToken()
	if tk == nil || tk.Position == nil {
		return p
	}
	p.Line = tk.Position.Line
	if file != nil {
		p.Field = pathAt(file, tk.Position.Line, tk.Position.Column)
	}
	var te *yaml.TypeError
	if errors.As(err, &te) && te.DstType != nil {
		p.Msg = fmt.Sprintf("%q is not a valid %s", tk.Value, kindName(te.DstType.Kind()))
	}
	return p
}

func kindName(k reflect.Kind) string {
	switch k {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Bool:
		return "boolean (true or false)"
	case reflect.Slice:
		return "list"
	case reflect.Map, reflect.Struct:
		return "mapping"
	}
	return k.String()
}

// pathAt returns the field path ("health.timeout") of the value node at a
// position, or "" when none is found.
func pathAt(file *ast.File, line, col int) string {
	found := ""
	for _, doc := range file.Docs {
		ast.Walk(visitorFunc(func(n ast.Node) bool {
			if found != "" {
				return false
			}
			if tk := n.GetToken(); tk != nil && tk.Position != nil && tk.Position.Line == line && tk.Position.Column == col {
				if _, isMap := n.(*ast.MappingValueNode); !isMap {
					found = strings.TrimPrefix(n.GetPath(), "$.")
					if found == "$" {
						found = ""
					}
					return false
				}
			}
			return true
		}), doc)
	}
	return found
}

// lineOf finds the line of field (a path like "endpoints[1].base_url") in the
// parsed file, walking up to the nearest parent that exists.
func lineOf(file *ast.File, field string) int {
	for field != "" {
		if p, err := yaml.PathString("$." + field); err == nil {
			if n, err := p.FilterFile(file); err == nil && n != nil {
				if tk := n.GetToken(); tk != nil && tk.Position != nil {
					return tk.Position.Line
				}
			}
		}
		i := strings.LastIndexAny(field, ".[")
		if i < 0 {
			break
		}
		field = field[:i]
	}
	return 0
}
