package dataplane

//go:generate go tool bpf2go -cc clang-19 -target bpfel -cflags "-O2 -g -Wall -Werror -idirafter /usr/include/x86_64-linux-gnu" -type endpoint -type served_port -type server_settings -type wire_key -type ident_key -type service_key -type service -type ct_key -type ct_entry -type ep_stats -type drop_reason -type policy_key -type policy_verdict -type export_key -type outside_key -type outside_kind -type egress_key -type published_key -type gateway_settings -type ingress_key -type ingress_entry daoli bpf/daoli.c -- -I./bpf
