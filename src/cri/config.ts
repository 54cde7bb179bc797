// The CRI plugin's config section (`[plugins."io.containerd.grpc.v1.cri"]`) with containerd 1.6's
// keys and Linux defaults, so a Kubernetes node's config.toml loads unchanged and `config default`
// prints what operators expect. It lives with the CRI code (which reads it) rather than in the
// plugin module, so src/cri never imports plugins.
import type { CriRegistryConfig } from "../core/remotes/cri-registry.js";

export const runtimeDefaults = (runtimeType: string, options: Record<string, unknown>) => ({
  base_runtime_spec: "",
  cni_conf_dir: "",
  cni_max_conf_num: 0,
  container_annotations: [] as string[],
  pod_annotations: [] as string[],
  privileged_without_host_devices: false,
  runtime_engine: "",
  runtime_path: "",
  runtime_root: "",
  runtime_type: runtimeType,
  options,
});

/** containerd 1.6's CRI defaults on Linux (`containerd config default`). */
export function criDefaults() {
  return {
    device_ownership_from_security_context: false,
    disable_apparmor: false,
    disable_cgroup: false,
    disable_hugetlb_controller: true,
    disable_proc_mount: false,
    disable_tcp_service: true,
    enable_selinux: false,
    enable_tls_streaming: false,
    enable_unprivileged_icmp: false,
    enable_unprivileged_ports: false,
    ignore_image_defined_volumes: false,
    max_concurrent_downloads: 3,
    max_container_log_line_size: 16384,
    netns_mounts_under_state_dir: false,
    restrict_oom_score_adj: false,
    sandbox_image: "registry.k8s.io/pause:3.6",
    selinux_category_range: 1024,
    stats_collect_period: 10,
    stream_idle_timeout: "4h0m0s",
    stream_server_address: "127.0.0.1",
    stream_server_port: "0",
    systemd_cgroup: false,
    tolerate_missing_hugetlb_controller: true,
    unset_seccomp_profile: "",
    cni: {
      bin_dir: "/opt/cni/bin",
      conf_dir: "/etc/cni/net.d",
      conf_template: "",
      ip_pref: "",
      max_conf_num: 1,
    },
    containerd: {
      default_runtime_name: "runc",
      disable_snapshot_annotations: true,
      discard_unpacked_layers: false,
      ignore_rdt_not_enabled_errors: false,
      no_pivot: false,
      snapshotter: "overlayfs",
      default_runtime: runtimeDefaults("", {}),
      runtimes: {
        runc: runtimeDefaults("io.containerd.runc.v2", {
          BinaryName: "",
          CriuImagePath: "",
          CriuPath: "",
          CriuWorkPath: "",
          IoGid: 0,
          IoUid: 0,
          NoNewKeyring: false,
          NoPivotRoot: false,
          Root: "",
          ShimCgroup: "",
          SystemdCgroup: false,
        }),
      } as Record<string, ReturnType<typeof runtimeDefaults>>,
      untrusted_workload_runtime: runtimeDefaults("", {}),
    },
    image_decryption: { key_model: "node" },
    registry: {
      config_path: "",
      auths: {},
      configs: {},
      headers: {},
      mirrors: {},
    } as CriRegistryConfig,
    x509_key_pair_streaming: { tls_cert_file: "", tls_key_file: "" },
  };
}

export type CriConfig = ReturnType<typeof criDefaults>;
