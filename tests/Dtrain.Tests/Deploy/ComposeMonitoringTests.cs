using System.Diagnostics;
using Dtrain.Tests.Observability;
using Dtrain.Tests.Support;
using YamlDotNet.RepresentationModel;

namespace Dtrain.Tests.Deploy;

/// <summary>deploy/docker-compose.yml's optional Prometheus (profile monitoring) and deploy/prometheus.yml: what it scrapes, and that Prometheus's own promtool accepts it.</summary>
public class ComposeMonitoringTests
{
    static YamlMappingNode Load(params string[] path)
    {
        var yaml = new YamlStream();
        yaml.Load(new StringReader(File.ReadAllText(RepoFiles.PathOf(path))));
        return (YamlMappingNode)yaml.Documents[0].RootNode;
    }

    static YamlNode Get(YamlNode node, params string[] keys)
    {
        foreach (var k in keys) node = ((YamlMappingNode)node).Children[new YamlScalarNode(k)];
        return node;
    }

    static List<string> Strings(YamlNode node) => [.. ((YamlSequenceNode)node).Children.Select(c => ((YamlScalarNode)c).Value ?? "")];

    [Fact]
    public void The_monitoring_profile_scrapes_the_coordinator_and_discovers_the_workers_through_it()
    {
        var compose = Load("deploy", "docker-compose.yml");
        var prometheus = Get(compose, "services", "prometheus");
        Assert.Equal(["monitoring"], Strings(Get(prometheus, "profiles")));   // optional: `up` alone does not start it
        Assert.Contains("./prometheus.yml:/etc/prometheus/prometheus.yml:ro", Strings(Get(prometheus, "volumes")));
        // The CA that verifies the coordinator, the client certificate and a metrics token: made by the one-shot
        // metrics-credentials service (also in the monitoring profile), which Prometheus waits for.
        Assert.Contains("prometheus-credentials:/etc/prometheus/dtrain:ro", Strings(Get(prometheus, "volumes")));
        Assert.Equal("service_completed_successfully", ((YamlScalarNode)Get(prometheus, "depends_on", "metrics-credentials", "condition")).Value);
        var credentials = Get(compose, "services", "metrics-credentials");
        Assert.Equal(["monitoring"], Strings(Get(credentials, "profiles")));
        var script = Strings(Get(credentials, "command"))[0];
        Assert.Contains("dtrain tokens create --role metrics", script, StringComparison.Ordinal);
        Assert.Contains("--reuid=10001", script, StringComparison.Ordinal);   // tokens.json stays the coordinator's user's
        Assert.Contains(Strings(Get(credentials, "volumes")), v => v.StartsWith("certs-client:", StringComparison.Ordinal));
        Assert.Contains(Strings(Get(credentials, "volumes")), v => v.StartsWith("coordinator-data:/var/lib/dtrain", StringComparison.Ordinal));
        var worker = Strings(Get(compose, "services", "worker", "command"));
        Assert.Equal("9400", worker[worker.IndexOf("--http-port") + 1]);
        Assert.Contains("9400", Strings(Get(compose, "services", "worker", "expose")));

        var config = Load("deploy", "prometheus.yml");
        var jobs = ((YamlSequenceNode)Get(config, "scrape_configs")).Children.Cast<YamlMappingNode>().ToDictionary(j => ((YamlScalarNode)Get(j, "job_name")).Value!);
        var coordinator = jobs["dtrain-coordinator"];
        Assert.Equal("https", ((YamlScalarNode)Get(coordinator, "scheme")).Value);
        Assert.Equal(["coordinator:8265"], Strings(Get(((YamlSequenceNode)Get(coordinator, "static_configs"))[0], "targets")));
        var sd = ((YamlSequenceNode)Get(jobs["dtrain-workers"], "http_sd_configs"))[0];
        Assert.Equal("https://coordinator:8265/metrics/targets", ((YamlScalarNode)Get(sd, "url")).Value);
        AssertCredentials(config, "coordinator");
    }

    /// <summary>
    /// Every scrape and the service discovery present the client certificate (the listeners ask for one over TLS), and
    /// the coordinator's two send the metrics token as a Bearer token (type spelled out: Prometheus 2.42's http_sd
    /// otherwise sends it bare, and gets 401).
    /// </summary>
    static void AssertCredentials(YamlMappingNode config, string coordinatorName)
    {
        var jobs = ((YamlSequenceNode)Get(config, "scrape_configs")).Children.Cast<YamlMappingNode>().ToDictionary(j => ((YamlScalarNode)Get(j, "job_name")).Value!);
        var sd = ((YamlSequenceNode)Get(jobs["dtrain-workers"], "http_sd_configs"))[0];
        foreach (var (what, node) in new[] { ("coordinator", (YamlNode)jobs["dtrain-coordinator"]), ("workers", jobs["dtrain-workers"]), ("service discovery", sd) })
        {
            Assert.True(((YamlMappingNode)Get(node, "tls_config")).Children.ContainsKey(new YamlScalarNode("cert_file")), $"{what}: no client certificate");
            Assert.True(((YamlMappingNode)Get(node, "tls_config")).Children.ContainsKey(new YamlScalarNode("key_file")), $"{what}: no client key");
        }
        foreach (var node in new[] { (YamlNode)jobs["dtrain-coordinator"], sd })
        {
            Assert.Equal("Bearer", ((YamlScalarNode)Get(node, "authorization", "type")).Value);
            Assert.Equal("/etc/prometheus/dtrain/token", ((YamlScalarNode)Get(node, "authorization", "credentials_file")).Value);
            Assert.Equal(coordinatorName, ((YamlScalarNode)Get(node, "tls_config", "server_name")).Value);
        }
    }

    [Fact]
    public void The_kubernetes_scrape_config_scrapes_the_coordinator_service_with_the_client_certificate_and_a_metrics_token()
    {
        var config = Load("deploy", "k8s", "prometheus.yml");
        var jobs = ((YamlSequenceNode)Get(config, "scrape_configs")).Children.Cast<YamlMappingNode>().ToDictionary(j => ((YamlScalarNode)Get(j, "job_name")).Value!);
        Assert.Equal(["dtrain-coordinator:8265"], Strings(Get(((YamlSequenceNode)Get(jobs["dtrain-coordinator"], "static_configs"))[0], "targets")));
        var sd = ((YamlSequenceNode)Get(jobs["dtrain-workers"], "http_sd_configs"))[0];
        Assert.Equal("https://dtrain-coordinator:8265/metrics/targets", ((YamlScalarNode)Get(sd, "url")).Value);
        AssertCredentials(config, "dtrain-coordinator");
    }

    [PrometheusTheory]
    [InlineData("deploy/prometheus.yml")]
    [InlineData("deploy/k8s/prometheus.yml")]
    public void Promtool_accepts_the_prometheus_config(string file)
    {
        var promtool = Path.Combine(Path.GetDirectoryName(PrometheusServer.Binary ?? "/usr/bin/prometheus")!, "promtool");
        Assert.True(File.Exists(promtool), $"no promtool next to prometheus ({promtool})");
        var psi = new ProcessStartInfo(promtool, ["check", "config", "--syntax-only", RepoFiles.PathOf(file.Split('/'))]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        var output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        Assert.True(p.WaitForExit(60_000), "promtool did not finish");
        Assert.True(p.ExitCode == 0, output);
    }
}
