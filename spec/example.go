package spec

import _ "embed"

// Example is the commented 3-node example spec that `etcdbake init` writes.
//
//go:embed example.yaml
var Example []byte
