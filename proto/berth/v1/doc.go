// Package berthv1 holds Berth's wire and storage types, generated from the
// .proto files beside it by `go tool -modfile=tools/go.mod buf generate`
// (see buf.gen.yaml). Do not edit the .pb.go files; change the .proto and
// regenerate.
package berthv1
