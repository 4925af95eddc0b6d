#!/usr/bin/env bash
# setup.sh PURPOSE...: installs what daoli needs for each purpose, and
# nothing that is already there. Safe to run again.
#
#   build     Go modules (downloaded by the go command itself)
#   demo      iproute2 for the demo's network namespaces
#   test      iproute2 for the network-namespace tests; staticcheck
#   generate  clang-19, llvm-19 (llvm-strip), libbpf and kernel headers,
#             to rebuild the committed eBPF objects
#   bench     iproute2, iperf3 and iptables for benchmarks/ (make bench)
#   docker    Debian's docker.io (dockerd 20.10, containerd, runc) for the
#             Docker plugin's tests; they start their own dockerd, so no
#             system one is started or needed
#   kubernetes  Debian's containerd (1.6, with its CRI plugin) and runc, and
#             into .tools/: crictl (sigs.k8s.io/cri-tools) and the CNI
#             loopback plugin (containernetworking/plugins), for the CNI
#             plugin's runtime tests; they start their own containerd
#   etcd      .tools/etcd, the etcd server at the version go.mod names
#             (a go tool of this module), for a registry on etcd
#             (docs/ha.md); tests build it themselves
#
# Debian packages need root; Go tools go to .tools/ in the repository.
set -euo pipefail
cd "$(dirname "$0")/.."

STATICCHECK_VERSION=v0.8.2   # supports the go directive in go.mod
CRICTL_VERSION=v1.37.0       # speaks CRI v1, which containerd 1.6 serves
CNI_PLUGINS_VERSION=v1.10.0  # the loopback plugin containerd's CRI always runs
CLANG=clang-19               # the one clang that builds the committed objects

apt_packages=()
need_tools=()
for purpose in "$@"; do
	case "$purpose" in
	build) ;;
	demo) apt_packages+=(iproute2) ;;
	test)
		apt_packages+=(iproute2)
		need_tools+=(staticcheck)
		;;
	generate) apt_packages+=("$CLANG" llvm-19 libbpf-dev linux-libc-dev) ;;
	bench) apt_packages+=(iproute2 iperf3 iptables) ;;
	docker) apt_packages+=(docker.io containerd runc util-linux) ;; # swarmhook's tests run their own dockerd
	etcd) need_tools+=(etcd) ;;
	kubernetes)
		apt_packages+=(containerd runc util-linux)
		need_tools+=(crictl loopback)
		;;
	*)
		echo "setup.sh: unknown purpose \"$purpose\"; want build, demo, test, generate, docker, kubernetes, etcd or bench" >&2
		exit 2
		;;
	esac
done

missing=()
for p in "${apt_packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	if [ "$(id -u)" != 0 ]; then
		echo "setup.sh: missing Debian packages: ${missing[*]}; run as root, or install them" >&2
		exit 1
	fi
	echo "setup.sh: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

for tool in "${need_tools[@]}"; do
	case "$tool" in
	staticcheck)
		if ! .tools/staticcheck -version 2>/dev/null | grep -q "${STATICCHECK_VERSION#v}"; then
			echo "setup.sh: installing staticcheck $STATICCHECK_VERSION into .tools/"
			GOBIN="$PWD/.tools" go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
		fi
		;;
	crictl)
		if ! .tools/crictl --version 2>/dev/null | grep -q "${CRICTL_VERSION#v}"; then
			echo "setup.sh: installing crictl $CRICTL_VERSION into .tools/"
			GOBIN="$PWD/.tools" go install -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL_VERSION#v}" \
				"sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
		fi
		;;
	loopback)
		if [ ! -x .tools/cni/loopback ] || [ "$(cat .tools/cni/.version 2>/dev/null)" != "$CNI_PLUGINS_VERSION" ]; then
			echo "setup.sh: installing the CNI loopback plugin $CNI_PLUGINS_VERSION into .tools/cni/"
			mkdir -p .tools/cni
			GOBIN="$PWD/.tools/cni" go install "github.com/containernetworking/plugins/plugins/main/loopback@$CNI_PLUGINS_VERSION"
			echo "$CNI_PLUGINS_VERSION" >.tools/cni/.version
		fi
		;;
	etcd)
		if [ ! -x .tools/etcd ] || ! .tools/etcd --version | grep -q "$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3 | tr -d v)"; then
			echo "setup.sh: building etcd into .tools/"
			go build -o .tools/etcd go.etcd.io/etcd/server/v3
		fi
		;;
	esac
done
