# The manager image: a static binary on a distroless base, running as nonroot.
#   docker build -t ghcr.io/mtls-rotator/mtls-rotator:dev .
FROM golang:1.26 AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOTOOLCHAIN=local
COPY go.mod go.sum ./
RUN go mod download
COPY main.go ./
COPY api/ api/
COPY controllers/ controllers/
COPY internal/ internal/
RUN go build -trimpath -ldflags="-s -w" -o /out/mtls-rotator .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/mtls-rotator /mtls-rotator
USER 65532:65532
ENTRYPOINT ["/mtls-rotator"]
