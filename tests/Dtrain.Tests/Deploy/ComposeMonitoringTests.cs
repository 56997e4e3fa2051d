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
        Assert.Contains(Strings(Get(prometheus, "volumes")), v => v.StartsWith("certs-client:", StringComparison.Ordinal));   // the CA that verifies the coordinator
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
    }

    [PrometheusFact]
    public void Promtool_accepts_the_prometheus_config()
    {
        var promtool = Path.Combine(Path.GetDirectoryName(PrometheusServer.Binary ?? "/usr/bin/prometheus")!, "promtool");
        Assert.True(File.Exists(promtool), $"no promtool next to prometheus ({promtool})");
        var psi = new ProcessStartInfo(promtool, ["check", "config", "--syntax-only", RepoFiles.PathOf("deploy", "prometheus.yml")]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        var output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        Assert.True(p.WaitForExit(60_000), "promtool did not finish");
        Assert.True(p.ExitCode == 0, output);
    }
}
