package controllers

import (
	"testing"

	. "github.com/onsi/gomega"
)

func TestRootKeyGenerations(t *testing.T) {
	tests := []struct {
		name    string
		secrets []string
		want    []int32
	}{
		{"none", nil, nil},
		{"only other objects' and the issuer's", []string{"other-root", "dapr-issuer", "dapr-backup", "dapr-root-ca"}, nil},
		{"the first generation", []string{"dapr-root", "dapr-issuer"}, []int32{1}},
		{"after a Rotate", []string{"dapr-root-g3", "dapr-issuer"}, []int32{3}},
		{"newest first", []string{"dapr-root", "dapr-root-g10", "dapr-root-g2"}, []int32{10, 2, 1}},
		{"not generation names", []string{"dapr-root-g", "dapr-root-g1", "dapr-root-g02", "dapr-root-gx", "dapr-root-g-4", "dapr-rootx"}, nil},
		{"another object whose name extends ours", []string{"dapr-root-g2", "dapr-root-g3x"}, []int32{2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			NewWithT(t).Expect(rootKeyGenerations("dapr", tt.secrets)).To(Equal(tt.want))
		})
	}
}
