// dashboard-lint checks a Grafana dashboard JSON file against Grafana's own schema types, as
// generated into grafana-foundation-sdk (Apache-2.0, pinned in go.mod) from Grafana's schemas.
//
//	dashboard-lint FILE   prints "ok: N panels" and exits 0, or one line per problem and exits 1
//
// Strict decoding (the SDK's UnmarshalJSONStrict): unknown fields, wrong JSON types and missing
// required fields fail, in the dashboard, templating, annotations, each panel, the options and
// fieldConfig.defaults.custom of panel types the SDK knows, and queries of data sources it knows
// (prometheus...). The SDK decodes fieldConfig's standard part loosely, and a panel type it does
// not know loosely: both are checked here too. Then the SDK's Validate() (gridPos bounds...).
//
// Limits: the schema is the SDK's, not a running Grafana's: no migration of old schemaVersions,
// enum values are not checked, nor whether a data source, variable or unit exists; PromQL is not
// parsed. Only top-level panels get the two extra checks (a row's nested panels do not).
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: dashboard-lint FILE")
		os.Exit(2)
	}
	// Without the plugin registry, panel options and queries would be decoded as untyped maps.
	plugins.RegisterDefaultPlugins()
	var strict, loose dashboard.Dashboard
	raw, err := os.ReadFile(os.Args[1])
	problems := messages(err)
	if err == nil {
		problems = append(messages(strict.UnmarshalJSONStrict(raw)), panelChecks(raw)...)
	}
	// The strict decoder of v0.0.22 drops every panel (PanelOrRowPanel returns its empty error
	// list as an error before keeping the panel), so Validate() runs on a loose decoding.
	if len(problems) == 0 {
		problems = messages(json.Unmarshal(raw, &loose))
		problems = append(problems, messages(loose.Validate())...)
	}
	for _, problem := range problems {
		fmt.Println(problem)
	}
	if len(problems) > 0 {
		os.Exit(1)
	}
	fmt.Printf("ok: %d panels\n", len(loose.Panels))
}

// panelChecks decodes each top-level panel's fieldConfig strictly, and rejects a panel type the
// SDK does not know (its options would escape the check).
func panelChecks(raw []byte) (problems []string) {
	var board struct {
		Panels []struct {
			Type        string          `json:"type"`
			FieldConfig json.RawMessage `json:"fieldConfig"`
		} `json:"panels"`
	}
	_ = json.Unmarshal(raw, &board) // the strict decoding has reported any error
	for i, panel := range board.Panels {
		at := "panels[" + strconv.Itoa(i) + "]"
		if _, known := cog.ConfigForPanelcfgVariant(panel.Type); !known && panel.Type != "row" {
			problems = append(problems, at+".type: "+strconv.Quote(panel.Type)+" is unknown to the SDK")
		}
		if len(panel.FieldConfig) == 0 || string(panel.FieldConfig) == "null" {
			continue // absent: the SDK allows it
		}
		var source dashboard.FieldConfigSource
		err := cog.MakeBuildErrors(at+".fieldConfig", source.UnmarshalJSONStrict(panel.FieldConfig))
		problems = append(problems, messages(err)...)
	}
	return problems
}

// messages: one line per entry of the SDK's error list (strict decoders return an empty,
// non-nil list on success: no problem), or the error's text.
func messages(err error) (lines []string) {
	var list cog.BuildErrors
	if err != nil && !errors.As(err, &list) {
		return []string{err.Error()}
	}
	for _, e := range list {
		lines = append(lines, e.Error())
	}
	return lines
}
