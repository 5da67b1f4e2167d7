package main

import (
	"bufio"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDockerfileCopiesEverythingTheManagerBuildsFrom: every package the
// manager is built from lies in what the Dockerfile copies, and the binary
// it builds (CGO off) is static, as the distroless base needs.
func TestDockerfileCopiesEverythingTheManagerBuildsFrom(t *testing.T) {
	f, err := os.Open("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	var copied []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[0] == "COPY" && !strings.HasPrefix(fields[1], "--from") {
			for _, src := range fields[1 : len(fields)-1] {
				copied = append(copied, strings.TrimSuffix(src, "/"))
			}
		}
	}
	root, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.Dir}}{{end}}", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dir := range strings.Fields(string(out)) {
		rel, err := filepath.Rel(root, dir)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue // a module dependency: go mod download fetches it
		}
		covered := false
		for _, c := range copied {
			if rel == c || strings.HasPrefix(rel, c+"/") || (rel == "." && c == "main.go") {
				covered = true
			}
		}
		if !covered {
			t.Errorf("the manager builds from %s, which the Dockerfile does not copy", rel)
		}
	}

	bin := filepath.Join(t.TempDir(), "mtls-rotator")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("static build: %v\n%s", err, out)
	}
	exe, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = exe.Close() }()
	for _, p := range exe.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary needs a dynamic loader; distroless/static has none")
		}
	}
	if libs, _ := exe.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary links %v", libs)
	}
}
