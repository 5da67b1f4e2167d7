package controllers

import (
	"testing"

	. "github.com/onsi/gomega"
)

func TestNewestRootKeyGeneration(t *testing.T) {
	tests := []struct {
		name    string
		secrets []string
		want    int32
	}{
		{"none", nil, 0},
		{"only other objects' and the issuer's", []string{"other-root", "dapr-issuer", "dapr-backup", "dapr-root-ca"}, 0},
		{"the first generation", []string{"dapr-root", "dapr-issuer"}, 1},
		{"after a Rotate", []string{"dapr-root-g3", "dapr-issuer"}, 3},
		{"the highest wins", []string{"dapr-root", "dapr-root-g2", "dapr-root-g10"}, 10},
		{"not generation names", []string{"dapr-root-g", "dapr-root-g1", "dapr-root-g02", "dapr-root-gx", "dapr-root-g-4", "dapr-rootx"}, 0},
		{"another object whose name extends ours", []string{"dapr-root-g2", "dapr-root-g3x"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			NewWithT(t).Expect(newestRootKeyGeneration("dapr", tt.secrets)).To(Equal(tt.want))
		})
	}
}
