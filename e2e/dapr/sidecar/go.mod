// The sidecar stand-in is built against a Dapr release, not this
// repository's module: hack/build-dapr.sh copies main.go into the wrapper
// module that requires that release, so Dapr never enters the operator's
// go.mod. This file keeps the directory out of the operator's module.
module github.com/mtls-rotator/mtls-rotator/e2e/dapr/sidecar

go 1.26
