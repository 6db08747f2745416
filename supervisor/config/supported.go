package config

// supported says which blocks the supervisor acts on. A block that parses
// but is not wired yet is rejected with "not supported yet" instead of being
// silently ignored. Flip an entry when its capability is wired end to end.
var supported = map[string]bool{
	"app":       true,
	"data":      true,
	"store":     true,
	"backup":    true,
	"telemetry": true,
	"control":   true,
	"log":       true,
	"consul":    true,
	"vault":     true,
	"template":  true,
	"env":       true,
	"election":  true,
	"service":   true,
}
