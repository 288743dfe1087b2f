# Shared by tests/vm/setup and tests/vm/run-in-vm (sourced, not executed).

# Where the guest kernel, its modules and the initramfs base live (outside the repository).
VM_CACHE="${PROBESET_VM_CACHE:-/var/cache/probeset-vm}"

# Modules the initramfs loads (with their dependencies) to reach the host's root over virtio-9p
# and to put a tmpfs overlay on top of it.
VM_MODULES=(virtio_pci 9pnet_virtio 9p overlay)

# The guest runs Debian's stock kernel whose version matches the newest installed
# linux-headers-<v>-amd64: BCC in the guest compiles against those headers, so they must match.
vm_kernel_version() {
  local hdr
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  [[ -n "$hdr" ]] || return 1
  hdr=${hdr#/usr/src/linux-headers-}
  echo "$hdr"
}
