using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using Dtrain.Server;
using Dtrain.Tests.Support;
using Dtrain.Worker;
using YamlDotNet.RepresentationModel;

namespace Dtrain.Tests.Deploy;

/// <summary>
/// deploy/k8s as Kubernetes receives it: rendered by `kubectl kustomize` (a real process) and checked against what the
/// servers need and docs/deploy.md promises — ports, health probes (over TLS), storage, the worker's advertised pod IP,
/// TLS certificates from Secrets, the non-root user, the options ConfigMap and the NetworkPolicy. Nothing is applied to a cluster.
/// </summary>
public class KubernetesManifestTests
{
    const int CoordinatorPort = 5000;
    const int WorkerPort = 7000;
    const string DataDir = "/var/lib/dtrain";

    static readonly Lazy<IReadOnlyList<YamlMappingNode>> Rendered = new(Render);

    static IReadOnlyList<YamlMappingNode> Documents => Rendered.Value;

    static YamlMappingNode Resource(string kind, string name) =>
        Assert.Single(Documents, d => d.Str("kind") == kind && d.Str("metadata", "name") == name);

    static YamlMappingNode Coordinator => Resource("StatefulSet", "dtrain-coordinator");

    static YamlMappingNode Workers => Resource("Deployment", "dtrain-worker");

    static YamlMappingNode OptionsConfigMap => Assert.Single(Documents, d => d.Str("kind") == "ConfigMap");

    static YamlNode PodSpec(YamlNode workload) => workload.At("spec", "template", "spec") ?? throw new InvalidOperationException("no pod template");

    static Dictionary<string, string> PodLabels(YamlNode workload) => workload.At("spec", "template", "metadata", "labels").Strings();

    static YamlNode OnlyContainer(YamlNode workload) => Assert.Single(PodSpec(workload).Seq("containers"));

    [Fact]
    public void Renders_a_coordinator_workers_a_service_options_and_network_policies()
    {
        var kinds = Documents.Select(d => d.Str("kind")).ToHashSet();
        foreach (var kind in new[] { "ConfigMap", "Service", "StatefulSet", "Deployment", "NetworkPolicy" })
            Assert.True(kinds.Contains(kind), $"no {kind} in the rendered manifests (kinds: {string.Join(", ", kinds)})");
        Assert.Equal("1", Coordinator.Str("spec", "replicas"));
        Assert.Equal("2", Workers.Str("spec", "replicas"));
        foreach (var d in Documents)
            Assert.True(d.At("metadata", "labels").Strings().GetValueOrDefault("app.kubernetes.io/part-of") == "dtrain",
                $"{d.Str("kind")}/{d.Str("metadata", "name")} lacks the label app.kubernetes.io/part-of: dtrain");
        foreach (var w in new[] { Coordinator, Workers })
        {
            Assert.Equal("dtrain", PodLabels(w).GetValueOrDefault("app.kubernetes.io/name"));
            Assert.True(Selects(w.At("spec", "selector"), PodLabels(w)), $"{w.Str("metadata", "name")}: the selector does not match its own pod template");
        }
    }

    [Fact]
    public void Coordinator_keeps_its_data_on_a_claim_and_is_probed_over_grpc_health_with_tls()
    {
        var c = OnlyContainer(Coordinator);
        var args = Args(c);
        Assert.True(args.FirstOrDefault() == "serve", $"the coordinator's first argument must be the role `serve`: [{string.Join(' ', args)}]");
        Assert.Contains(CoordinatorPort.ToString(CultureInfo.InvariantCulture), c.Seq("ports").Select(p => p.Str("containerPort")));
        AssertOptionIfGiven(args, "--port", CoordinatorPort.ToString(CultureInfo.InvariantCulture));
        AssertOptionIfGiven(args, "--data-dir", DataDir);

        var claims = Coordinator.Seq("spec", "volumeClaimTemplates").Select(t => t.Str("metadata", "name")).ToList();
        var dataMount = Assert.Single(c.Seq("volumeMounts"), m => m.Str("mountPath") == DataDir);
        Assert.True(claims.Contains(dataMount.Str("name")), $"{DataDir} is mounted from '{dataMount.Str("name")}', not from a volumeClaimTemplate ({string.Join(", ", claims)})");

        AssertProbes(c, CoordinatorPort, "dtrain.jobs.v1.Jobs");

        var governing = Resource("Service", Coordinator.Str("spec", "serviceName") ?? "(no serviceName)");
        Assert.Equal("None", governing.Str("spec", "clusterIP"));
        Assert.True(Selects(governing.At("spec", "selector"), PodLabels(Coordinator)), "the StatefulSet's governing Service does not select its pod");
    }

    [Fact]
    public void Workers_register_with_the_coordinator_service_advertising_their_pod_ip()
    {
        var c = OnlyContainer(Workers);
        var args = Args(c);
        Assert.True(args.FirstOrDefault() == "worker", $"the worker's first argument must be the role `worker`: [{string.Join(' ', args)}]");
        Assert.Equal("https://dtrain-coordinator:5000", OptionValue(args, "--coordinator"));
        Assert.Equal("auto", OptionValue(args, "--threads"));
        Assert.True(c.At("resources", "limits", "cpu") is not null, "--threads auto sizes itself from limits.cpu: set it");

        var coordinatorUrl = new Uri(OptionValue(args, "--coordinator")!);
        var service = Resource("Service", coordinatorUrl.Host);
        Assert.Contains(coordinatorUrl.Port.ToString(CultureInfo.InvariantCulture), service.Seq("spec", "ports").Select(p => p.Str("port")));

        var advertise = Assert.Single(c.Seq("env"), e => e.Str("name") == "DTRAIN_Worker__AdvertiseHost");
        Assert.Equal("status.podIP", advertise.Str("valueFrom", "fieldRef", "fieldPath"));

        Assert.Contains(WorkerPort.ToString(CultureInfo.InvariantCulture), c.Seq("ports").Select(p => p.Str("containerPort")));
        AssertOptionIfGiven(args, "--port", WorkerPort.ToString(CultureInfo.InvariantCulture));
        AssertProbes(c, WorkerPort, "dtrain.worker.v1.WorkerControl");

        var grace = PodSpec(Workers).Str("terminationGracePeriodSeconds");
        Assert.True(grace is not null && int.Parse(grace, CultureInfo.InvariantCulture) >= 60,
            $"a training worker finishes its step before leaving: terminationGracePeriodSeconds {grace ?? "(default 30)"} < 60");
    }

    [Fact]
    public void Workers_of_one_node_share_its_dev_shm_so_the_data_plane_finds_them_on_one_host()
    {
        // The data plane's same-host probe is a file in /dev/shm (Dtrain.Collective.SharedMemoryRing.Directory): pods
        // of one node see each other's only when their /dev/shm is the node's.
        var c = OnlyContainer(Workers);
        var mount = Assert.Single(c.Seq("volumeMounts"), m => m.Str("mountPath") == Dtrain.Collective.SharedMemoryRing.Directory);
        Assert.NotEqual("true", mount.Str("readOnly"));
        var volume = Assert.Single(PodSpec(Workers).Seq("volumes"), v => v.Str("name") == mount.Str("name"));
        Assert.Equal("/dev/shm", volume.Str("hostPath", "path"));
        Assert.Equal("Directory", volume.Str("hostPath", "type"));
        // The coordinator holds no ring: it does not get the node's shared memory.
        Assert.DoesNotContain(OnlyContainer(Coordinator).Seq("volumeMounts"), m => m.Str("mountPath") == Dtrain.Collective.SharedMemoryRing.Directory);
    }

    [Fact]
    public void Servers_listen_beyond_loopback_only_with_tls_certificates_from_secrets()
    {
        foreach (var (workload, role, secret) in new[] { (Coordinator, "coordinator", "dtrain-coordinator-tls"), (Workers, "worker", "dtrain-worker-tls") })
        {
            var what = $"{workload.Str("kind")}/{workload.Str("metadata", "name")}";
            var c = OnlyContainer(workload);
            var args = Args(c);
            Assert.Equal("0.0.0.0", OptionValue(args, "--listen"));
            Assert.False(args.Contains("--insecure"), $"{what} runs with --insecure");
            var dir = OptionValue(args, "--tls-dir");
            Assert.True(dir is not null, $"{what} listens beyond loopback, which needs TLS: no --tls-dir in [{string.Join(' ', args)}]");
            Assert.Equal($"/etc/dtrain/tls/{role}", dir);
            var mount = Assert.Single(c.Seq("volumeMounts"), m => m.Str("mountPath") == dir);
            Assert.Equal("true", mount.Str("readOnly"));
            var volume = Assert.Single(PodSpec(workload).Seq("volumes"), v => v.Str("name") == mount.Str("name"));
            Assert.Equal(secret, volume.Str("secret", "secretName"));
            Assert.Null(volume.Str("secret", "optional"));
            // Mounted root:fsGroup; the dtrain user (not root) reads it through the group, nobody else at all.
            var mode = Convert.ToInt32(volume.Str("secret", "defaultMode") ?? "420", CultureInfo.InvariantCulture);
            Assert.True((mode & 0b000_100_000) != 0, $"{what}: defaultMode {Convert.ToString(mode, 8)} does not let the fsGroup read the certificates");
            Assert.True((mode & 0b000_000_111) == 0, $"{what}: defaultMode {Convert.ToString(mode, 8)} lets every user read the private keys");
        }
        Assert.StartsWith("https://", OptionValue(Args(OnlyContainer(Workers)), "--coordinator"), StringComparison.Ordinal);
    }

    [Fact]
    public void Service_selects_only_the_coordinator_pod_and_targets_its_grpc_and_dashboard_ports()
    {
        var service = Resource("Service", "dtrain-coordinator");
        var selector = service.At("spec", "selector").Strings();
        Assert.NotEmpty(selector);
        var coordinatorLabels = PodLabels(Coordinator);
        foreach (var (key, value) in selector)
            Assert.True(coordinatorLabels.GetValueOrDefault(key) == value, $"Service selector {key}={value} does not match the coordinator pod's labels");
        Assert.False(selector.All(s => PodLabels(Workers).GetValueOrDefault(s.Key) == s.Value), "the coordinator Service also selects the worker pods");

        // gRPC on 5000 and the dashboard on 8265, each reaching the container port of that number.
        foreach (var (name, number) in new[] { ("grpc", "5000"), ("http", "8265") })
        {
            var port = Assert.Single(service.Seq("spec", "ports"), p => p.Str("name") == name);
            Assert.Equal(number, port.Str("port"));
            var target = port.Str("targetPort") ?? port.Str("port")!;
            var resolved = int.TryParse(target, NumberStyles.None, CultureInfo.InvariantCulture, out _)
                ? target
                : OnlyContainer(Coordinator).Seq("ports").SingleOrDefault(p => p.Str("name") == target)?.Str("containerPort");
            Assert.True(resolved == number, $"the Service's {name} targetPort '{target}' resolves to {resolved ?? "no container port"}, not {number}");
        }
        AssertOptionIfGiven(Args(OnlyContainer(Coordinator)), "--http-port", "8265");
    }

    [Fact]
    public void Containers_run_the_dtrain_image_as_the_non_root_user_with_the_options_configmap()
    {
        var configMap = OptionsConfigMap.Str("metadata", "name");
        foreach (var workload in new[] { Coordinator, Workers })
        {
            var what = $"{workload.Str("kind")}/{workload.Str("metadata", "name")}";
            var pod = PodSpec(workload);
            Assert.Equal("true", pod.Str("securityContext", "runAsNonRoot"));
            Assert.Equal("10001", pod.Str("securityContext", "runAsUser"));
            Assert.Equal("10001", pod.Str("securityContext", "fsGroup"));
            var containers = pod.Seq("containers").Concat(pod.Seq("initContainers")).ToList();
            foreach (var c in containers)
            {
                var image = c.Str("image") ?? "";
                Assert.True(image.StartsWith("dtrain:", StringComparison.Ordinal), $"{what}: image '{image}' is not dtrain:TAG");
                Assert.Equal("IfNotPresent", c.Str("imagePullPolicy"));
                Assert.Null(c.At("command"));
                Assert.Equal("false", c.Str("securityContext", "allowPrivilegeEscalation"));
                Assert.Contains("ALL", c.Seq("securityContext", "capabilities", "drop").Select(Scalar));
                Assert.Equal("true", c.Str("securityContext", "readOnlyRootFilesystem"));
                var tmp = Assert.Single(c.Seq("volumeMounts"), m => m.Str("mountPath") == "/tmp");
                var volume = Assert.Single(pod.Seq("volumes"), v => v.Str("name") == tmp.Str("name"));
                Assert.True(volume.At("emptyDir") is not null, $"{what}: /tmp must be an emptyDir (the root filesystem is read-only)");
            }
            var main = Assert.Single(pod.Seq("containers"));
            Assert.True(main.Seq("envFrom").Any(e => e.Str("configMapRef", "name") == configMap), $"{what} does not take its options from the ConfigMap {configMap} (envFrom)");
        }
    }

    [Fact]
    public void Network_policies_admit_only_dtrain_pods_to_the_coordinator_and_worker_ports()
    {
        var policies = Documents.Where(d => d.Str("kind") == "NetworkPolicy").ToList();
        var coordinator = PodLabels(Coordinator);
        var worker = PodLabels(Workers);
        var stranger = new Dictionary<string, string> { ["app.kubernetes.io/name"] = "something-else" };

        Assert.True(policies.Any(p => Selects(p.At("spec", "podSelector"), coordinator)), "no NetworkPolicy isolates the coordinator pod");
        Assert.True(policies.Any(p => Selects(p.At("spec", "podSelector"), worker)), "no NetworkPolicy isolates the worker pods");
        Assert.True(Admits(policies, worker, coordinator, CoordinatorPort), "workers cannot reach the coordinator on 5000");
        Assert.True(Admits(policies, coordinator, worker, WorkerPort), "the coordinator cannot reach workers on 7000");
        Assert.True(Admits(policies, worker, worker, WorkerPort), "workers cannot reach each other on 7000 (ring all-reduce)");
        Assert.False(Admits(policies, stranger, coordinator, CoordinatorPort), "any pod may reach the coordinator on 5000");
        Assert.False(Admits(policies, stranger, worker, WorkerPort), "any pod may reach the workers on 7000");
    }

    /// <summary>Prometheus finds both servers by their pod annotations, the annotated port is the one the server's --http-port opens, and only a Prometheus pod (besides dtrain's) may reach it.</summary>
    [Fact]
    public void Pods_carry_scrape_annotations_for_the_http_port_that_prometheus_may_reach()
    {
        var policies = Documents.Where(d => d.Str("kind") == "NetworkPolicy").ToList();
        var prometheus = new Dictionary<string, string> { ["app.kubernetes.io/name"] = "prometheus" };
        var stranger = new Dictionary<string, string> { ["app.kubernetes.io/name"] = "something-else" };
        foreach (var (workload, port) in new[] { (Coordinator, 8265), (Workers, 9400) })
        {
            var name = workload.Str("metadata", "name");
            var annotations = workload.At("spec", "template", "metadata", "annotations").Strings();
            Assert.Equal("true", annotations.GetValueOrDefault("prometheus.io/scrape"));
            Assert.Equal("https", annotations.GetValueOrDefault("prometheus.io/scheme"));   // the HTTP listener is TLS when the server is
            Assert.Equal("/metrics", annotations.GetValueOrDefault("prometheus.io/path"));
            Assert.Equal(port.ToString(CultureInfo.InvariantCulture), annotations.GetValueOrDefault("prometheus.io/port"));
            var container = OnlyContainer(workload);
            Assert.True(OptionValue(Args(container), "--http-port") == port.ToString(CultureInfo.InvariantCulture), $"{name}: --http-port is not {port}");
            Assert.Contains(container.Seq("ports"), p => p.Str("containerPort") == port.ToString(CultureInfo.InvariantCulture));
            Assert.True(Admits(policies, prometheus, PodLabels(workload), port), $"{name}: a Prometheus pod cannot reach port {port}");
            Assert.False(Admits(policies, stranger, PodLabels(workload), port), $"{name}: any pod may reach port {port}");
        }
    }

    /// <summary>Every DTRAIN_Coordinator__X / DTRAIN_Worker__X key in the ConfigMap binds an existing option.</summary>
    [Fact]
    public void ConfigMap_keys_name_real_options()
    {
        var sections = new (string Prefix, Type Options, string[] SetByManifests)[]
        {
            ("DTRAIN_Coordinator__", typeof(CoordinatorOptions), ["Port", "Listen", "DataDir", "Tls"]),
            ("DTRAIN_Worker__", typeof(WorkerOptions), ["Coordinator", "Port", "Listen", "AdvertiseHost", "Name", "Threads", "Tls"]),
        };
        var keys = OptionsConfigMap.At("data").Strings().Keys.ToList();
        foreach (var (prefix, options, setByManifests) in sections)
        {
            var section = prefix[..^2];
            Assert.True(keys.Any(k => k.StartsWith(prefix, StringComparison.Ordinal)), $"the ConfigMap sets no {prefix}* option");
            foreach (var key in keys.Where(k => k.StartsWith(section, StringComparison.OrdinalIgnoreCase)))
            {
                Assert.True(key.StartsWith(prefix, StringComparison.Ordinal), $"ConfigMap key {key}: options of this section are spelled {prefix}Key");
                var property = key[prefix.Length..].Split("__")[0];
                Assert.True(options.GetProperty(property) is not null,
                    $"ConfigMap key {key}: {options.FullName} has no property {property} (it has {string.Join(", ", options.GetProperties().Select(p => p.Name))})");
                Assert.False(setByManifests.Contains(property), $"ConfigMap key {key} would be overridden by the pod's command line or env: change it in the manifest instead");
            }
        }
    }

    static IReadOnlyList<YamlMappingNode> Render()
    {
        var psi = new ProcessStartInfo("kubectl") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("kustomize");
        psi.ArgumentList.Add(RepoFiles.PathOf("deploy", "k8s"));
        Process? process = null;
        try { process = Process.Start(psi); }
        catch (Win32Exception e)
        {
            Assert.Fail($"kubectl was not found ({e.Message}). These tests render deploy/k8s with `kubectl kustomize`: install kubectl (kustomize is built in), see https://kubernetes.io/docs/tasks/tools/");
        }
        using var p = process ?? throw new InvalidOperationException("kubectl did not start");
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(1)))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException("kubectl kustomize deploy/k8s did not finish within a minute");
        }
        Assert.True(p.ExitCode == 0, $"kubectl kustomize deploy/k8s: exit {p.ExitCode}\n{stderr.Result}");
        var stream = new YamlStream();
        stream.Load(new StringReader(stdout.Result));
        return [.. stream.Documents.Select(d => (YamlMappingNode)d.RootNode)];
    }

    static List<string> Args(YamlNode container) => [.. container.Seq("args").Select(Scalar)];

    static string Scalar(YamlNode node) => ((YamlScalarNode)node).Value ?? "";

    /// <summary>The value of `--name value` or `--name=value`, or null.</summary>
    static string? OptionValue(List<string> args, string name)
    {
        for (var i = 0; i < args.Count; i++)
        {
            if (args[i] == name) return i + 1 < args.Count ? args[i + 1] : null;
            if (args[i].StartsWith(name + "=", StringComparison.Ordinal)) return args[i][(name.Length + 1)..];
        }
        return null;
    }

    static void AssertOptionIfGiven(List<string> args, string name, string expected)
    {
        var value = OptionValue(args, name);
        Assert.True(value is null || value == expected, $"{name} {value} disagrees with the manifest's {expected}");
    }

    /// <summary>
    /// The servers speak only TLS, which the kubelet's grpc probes cannot: liveness (and startup) probe the port;
    /// readiness runs `dtrain health --service SERVICE` in the container (it reads the address and CA the server wrote).
    /// </summary>
    static void AssertProbes(YamlNode container, int port, string readiness)
    {
        var name = container.Str("name");
        foreach (var probe in new[] { "livenessProbe", "readinessProbe", "startupProbe" })
            Assert.True(container.At(probe, "grpc") is null, $"{name}: {probe} is a grpc probe, which cannot speak TLS");
        Assert.Equal(port.ToString(CultureInfo.InvariantCulture), container.Str("livenessProbe", "tcpSocket", "port"));
        if (container.At("startupProbe") is not null) Assert.Equal(port.ToString(CultureInfo.InvariantCulture), container.Str("startupProbe", "tcpSocket", "port"));
        var command = container.Seq("readinessProbe", "exec", "command").Select(Scalar).ToList();
        Assert.True(command.Take(2).SequenceEqual(["dtrain", "health"]), $"{name}: readiness must run `dtrain health`: [{string.Join(' ', command)}]");
        Assert.Equal(readiness, OptionValue(command, "--service"));
        var positional = new List<string>();
        for (var i = 2; i < command.Count; i++)
        {
            if (command[i] is "--service" or "-s" or "--timeout") i++;
            else if (!command[i].StartsWith('-')) positional.Add(command[i]);
        }
        Assert.True(positional.Count == 0, $"{name}: `dtrain health` in the probe must take the address (and CA) from the server's address file, not from [{string.Join(' ', positional)}]");
        var timeout = int.Parse(container.Str("readinessProbe", "timeoutSeconds") ?? "1", CultureInfo.InvariantCulture);
        var inner = double.Parse(OptionValue(command, "--timeout") ?? "5", CultureInfo.InvariantCulture);
        Assert.True(timeout > inner, $"{name}: readiness timeoutSeconds {timeout} must exceed the health call's --timeout {inner} plus the CLI's start");
    }

    /// <summary>A label selector (matchLabels and matchExpressions) matches the labels; an empty selector matches all.</summary>
    static bool Selects(YamlNode? selector, IReadOnlyDictionary<string, string> labels)
    {
        if (selector is null) return false;
        foreach (var (key, value) in selector.At("matchLabels").Strings())
            if (labels.GetValueOrDefault(key) != value) return false;
        foreach (var e in selector.Seq("matchExpressions"))
        {
            var key = e.Str("key") ?? "";
            var values = e.Seq("values").Select(Scalar).ToHashSet();
            var has = labels.TryGetValue(key, out var value);
            var ok = e.Str("operator") switch
            {
                "In" => has && values.Contains(value!),
                "NotIn" => !has || !values.Contains(value!),
                "Exists" => has,
                "DoesNotExist" => !has,
                var op => throw new InvalidOperationException($"unknown selector operator {op}"),
            };
            if (!ok) return false;
        }
        return true;
    }

    /// <summary>
    /// Whether a pod with <paramref name="from"/> labels (same namespace) may open TCP <paramref name="port"/> on a pod
    /// with <paramref name="to"/> labels. Conservative for the negative checks: an ipBlock peer admits anyone.
    /// </summary>
    static bool Admits(List<YamlMappingNode> policies, IReadOnlyDictionary<string, string> from, IReadOnlyDictionary<string, string> to, int port)
    {
        var applying = policies.Where(p => Selects(p.At("spec", "podSelector"), to)
            && (p.At("spec", "policyTypes") is null || p.Seq("spec", "policyTypes").Select(Scalar).Contains("Ingress"))).ToList();
        if (applying.Count == 0) return true;
        return applying.SelectMany(p => p.Seq("spec", "ingress")).Any(rule =>
        {
            var ports = rule.Seq("ports");
            var portOk = ports.Count == 0 || ports.Any(p =>
                (p.Str("protocol") ?? "TCP") == "TCP"
                && int.TryParse(p.Str("port"), NumberStyles.None, CultureInfo.InvariantCulture, out var first)
                && (first == port || (first < port && int.TryParse(p.Str("endPort"), NumberStyles.None, CultureInfo.InvariantCulture, out var last) && port <= last)));
            var peers = rule.Seq("from");
            var peerOk = peers.Count == 0 || peers.Any(peer => peer.At("ipBlock") is not null || Selects(peer.At("podSelector") ?? new YamlMappingNode(), from));
            return portOk && peerOk;
        });
    }
}

/// <summary>Path navigation over YamlDotNet's representation model; missing keys yield null or empty.</summary>
file static class YamlPath
{
    public static YamlNode? At(this YamlNode? node, params string[] path)
    {
        foreach (var key in path)
        {
            if (node is not YamlMappingNode map) return null;
            node = map.Children.FirstOrDefault(kv => kv.Key is YamlScalarNode k && k.Value == key).Value;
        }
        return node;
    }

    public static string? Str(this YamlNode? node, params string[] path) => (node.At(path) as YamlScalarNode)?.Value;

    public static List<YamlNode> Seq(this YamlNode? node, params string[] path) => node.At(path) is YamlSequenceNode s ? [.. s.Children] : [];

    public static Dictionary<string, string> Strings(this YamlNode? node) =>
        node is YamlMappingNode map
            ? map.Children.Where(kv => kv.Key is YamlScalarNode && kv.Value is YamlScalarNode)
                .ToDictionary(kv => ((YamlScalarNode)kv.Key).Value ?? "", kv => ((YamlScalarNode)kv.Value).Value ?? "")
            : [];
}
