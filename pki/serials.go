package pki

import "fmt"

// Serials lists each node's certificate serial numbers (lower-case hex) by kind (one of
// NodeKinds): what a release records, so that a node can be checked to serve the
// certificate it was given.
func (s *Set) Serials() (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	for node, files := range s.Nodes {
		out[node] = map[string]string{}
		for _, kind := range NodeKinds {
			p, _ := files.Kind(kind)
			c, err := ParseCert(p.Cert)
			if err != nil {
				return nil, fmt.Errorf("pki: node %s, %s certificate: %w", node, kind, err)
			}
			out[node][kind] = fmt.Sprintf("%x", c.SerialNumber)
		}
	}
	return out, nil
}
