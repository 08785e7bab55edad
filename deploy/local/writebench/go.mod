module github.com/berthhq/berth/deploy/local/writebench

go 1.26.8

replace github.com/berthhq/berth => ../../..

require (
	github.com/berthhq/berth v0.0.0-00010101000000-000000000000
	go.etcd.io/etcd/api/v3 v3.7.4
	google.golang.org/grpc v1.85.0
)

require (
	github.com/golang/protobuf v1.5.4 // indirect
	github.com/grpc-ecosystem/grpc-gateway/v2 v2.29.0 // indirect
	golang.org/x/net v0.62.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	google.golang.org/genproto/googleapis/api v0.0.0-20260817212433-ac3dfec99bb1 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)
