using System.Diagnostics;
using System.Text.Json;
using Dtrain.Cli;
using Dtrain.Tests.Support;
using YamlDotNet.RepresentationModel;

namespace Dtrain.Tests.Serving;

/// <summary>
/// The model server in deploy/: the compose service (profile serving) and the Kubernetes kustomization deploy/k8s/serving,
/// rendered by their real tools, run `serve-model` with arguments the CLI accepts, beyond loopback with TLS and a token.
/// </summary>
public class ServingDeployTests
{
    static string Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = RepoFiles.Root };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        Assert.True(p.WaitForExit(TimeSpan.FromMinutes(1)), $"{file} {string.Join(' ', args)} did not finish");
        Assert.True(p.ExitCode == 0, $"{file} {string.Join(' ', args)}: exit {p.ExitCode}\n{stderr.Result}");
        return stdout.Result;
    }

    static void AcceptedByTheCli(IReadOnlyList<string> args)
    {
        Assert.Equal("serve-model", args[0]);
        var parsed = DtrainCli.Build().Parse([.. args]);
        Assert.True(parsed.Errors.Count == 0, string.Join("; ", parsed.Errors.Select(e => e.Message)));
        foreach (var needed in new[] { "--listen", "--tls-dir", "--token-file" }) Assert.Contains(needed, args);
    }

    [Fact]
    public void The_compose_service_serves_over_tls_with_a_token_in_profile_serving()
    {
        var config = JsonDocument.Parse(Run("docker", "compose", "-f", "deploy/docker-compose.yml", "--profile", "serving", "config", "--format", "json")).RootElement;
        var service = config.GetProperty("services").GetProperty("model-server");
        Assert.Equal("serving", service.GetProperty("profiles")[0].GetString());
        AcceptedByTheCli([.. service.GetProperty("command").EnumerateArray().Select(a => a.GetString()!)]);
        var plain = JsonDocument.Parse(Run("docker", "compose", "-f", "deploy/docker-compose.yml", "config", "--format", "json")).RootElement;
        Assert.False(plain.GetProperty("services").TryGetProperty("model-server", out _), "model-server runs without --profile serving");
    }

    [Fact]
    public void The_kubernetes_deployment_probes_health_and_runs_serve_model_with_tls_and_a_token()
    {
        var yaml = new YamlStream();
        yaml.Load(new StringReader(Run("kubectl", "kustomize", "deploy/k8s/serving")));
        var deployment = yaml.Documents.Select(d => (YamlMappingNode)d.RootNode)
            .Single(d => d["kind"].ToString() == "Deployment" && ((YamlMappingNode)d["metadata"])["name"].ToString() == "dtrain-model-server");
        var pod = (YamlMappingNode)((YamlMappingNode)((YamlMappingNode)deployment["spec"])["template"])["spec"];
        var container = (YamlMappingNode)((YamlSequenceNode)pod["containers"])[0];
        AcceptedByTheCli([.. ((YamlSequenceNode)container["args"]).Select(a => a.ToString())]);
        Assert.Equal("/health/ready", ((YamlMappingNode)((YamlMappingNode)container["readinessProbe"])["httpGet"])["path"].ToString());
        Assert.Equal("/health/live", ((YamlMappingNode)((YamlMappingNode)container["livenessProbe"])["httpGet"])["path"].ToString());
    }
}
