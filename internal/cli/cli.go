// Package cli holds the subcommands of the mtls-rotator binary besides the
// operator itself: certs generate and certs export for self-hosted Dapr and
// for inspection, status, which lists every MTLSRootRotation with its
// expiries, and inspect, which names the Dapr pods that do not trust the
// root published last. They reuse the operator's own packages.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Usage is the overview printed for help and for an unknown subcommand.
const Usage = `usage:
  mtls-rotator [flags]                 run the operator (see mtls-rotator --help)
  mtls-rotator certs generate --out DIR [--root-key FILE] [--trust-domain D] [--force] ...
  mtls-rotator certs export --out DIR [--namespace NS] [--secret NAME] [--force] [--kubeconfig FILE]
  mtls-rotator status [--namespace NS] [--kubeconfig FILE]
  mtls-rotator inspect [--namespace NS] [-o text|json] [--kubeconfig FILE]
                                       Dapr pods that do not trust the root published last; exit 3 while any
`

// IsSubcommand reports whether args (without the program name) name a
// subcommand rather than operator flags.
func IsSubcommand(args []string) bool {
	return len(args) > 0 && (args[0] == "certs" || args[0] == "status" || args[0] == "inspect" || args[0] == "help")
}

// errUsage marks a usage error: exit status 2.
var errUsage = errors.New("usage error")

// Run runs the subcommand in args and returns the process exit status: 0 on
// success, 1 on failure, 2 on a usage error, 3 when inspect finds pods that
// do not trust the required root.
func Run(args []string, stdout, stderr io.Writer) int {
	err := run(args, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "mtls-rotator: %v\n", err)
		return 2
	case errors.Is(err, errUnconverged):
		return 3
	}
	fmt.Fprintf(stderr, "mtls-rotator: %v\n", err)
	return 1
}

func run(args []string, stdout, stderr io.Writer) error {
	switch {
	case len(args) == 0 || args[0] == "help":
		fmt.Fprint(stdout, Usage)
		return nil
	case args[0] == "status":
		return status(args[1:], stdout, stderr)
	case args[0] == "inspect":
		return inspect(args[1:], stdout, stderr)
	case args[0] == "certs" && len(args) > 1 && args[1] == "generate":
		return generate(args[2:], stdout, stderr)
	case args[0] == "certs" && len(args) > 1 && args[1] == "export":
		return export(args[2:], stdout, stderr)
	}
	fmt.Fprint(stderr, Usage)
	return fmt.Errorf("%w: unknown subcommand %q", errUsage, strings.Join(args[:min(len(args), 2)], " "))
}

// newFlags makes a flag set whose errors are usage errors.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parse parses args and refuses positional arguments.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %s: %v", errUsage, fs.Name(), err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: %s: unexpected argument %q", errUsage, fs.Name(), fs.Arg(0))
	}
	return nil
}

// outputFile is a file a command writes: its name and mode.
type outputFile struct {
	name string
	data []byte
	mode os.FileMode
}

// writeFiles writes files into dir, all or none: when one exists and force
// is false, nothing is written.
func writeFiles(dir string, files []outputFile, force bool) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	if !force {
		var existing []string
		for _, f := range files {
			if _, err := os.Lstat(filepath.Join(dir, f.name)); err == nil {
				existing = append(existing, f.name)
			}
		}
		if len(existing) > 0 {
			return fmt.Errorf("%s already holds %s: not overwritten (use --force to replace)", dir, strings.Join(existing, ", "))
		}
	}
	// Every file is written to a new temporary file first (created
	// exclusively, never through a link an attacker planted, its mode set on
	// the open file), then all are put into place: a failed write leaves the
	// directory as it was.
	tmps := make([]string, 0, len(files))
	defer func() {
		for _, tmp := range tmps {
			_ = os.Remove(tmp)
		}
	}()
	for _, f := range files {
		tmp, err := os.CreateTemp(dir, "."+f.name+".*")
		if err != nil {
			return fmt.Errorf("writing %s: %w", filepath.Join(dir, f.name), err)
		}
		tmps = append(tmps, tmp.Name())
		merr := tmp.Chmod(f.mode)
		_, werr := tmp.Write(f.data)
		if err := errors.Join(merr, werr, tmp.Close()); err != nil {
			return fmt.Errorf("writing %s: %w", filepath.Join(dir, f.name), err)
		}
	}
	return placeFiles(dir, tmps, files, force)
}

// placeFiles moves the written temporary files into place. Without force a
// hard link puts each one, which fails if the name exists, even one created
// since it was checked; the files already placed are then taken back.
func placeFiles(dir string, tmps []string, files []outputFile, force bool) error {
	var placed []string
	for i, f := range files {
		dest := filepath.Join(dir, f.name)
		var err error
		if force {
			err = os.Rename(tmps[i], dest)
		} else {
			err = os.Link(tmps[i], dest)
		}
		if err != nil {
			for _, p := range placed {
				_ = os.Remove(p)
			}
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%s already holds %s: not overwritten (use --force to replace)", dir, f.name)
			}
			return fmt.Errorf("writing %s: %w", dest, err)
		}
		placed = append(placed, dest)
	}
	return nil
}
