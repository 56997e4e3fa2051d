using Dtrain.Collective;
using Dtrain.Tests.Support;
using YamlDotNet.RepresentationModel;

namespace Dtrain.Tests.Deploy;

/// <summary>
/// deploy/docker-compose.yml gives the workers of one host one shared memory: a tmpfs volume every worker container
/// mounts at /dev/shm, where the data plane's same-host probe and its rings and segments live — so containers of one
/// host sum through shared memory instead of TCP+TLS, while a worker on another host (another kernel) never sees it.
/// </summary>
public class ComposeSharedMemoryTests
{
    static YamlMappingNode Compose()
    {
        var yaml = new YamlStream();
        yaml.Load(new StringReader(File.ReadAllText(RepoFiles.PathOf("deploy", "docker-compose.yml"))));
        return (YamlMappingNode)yaml.Documents[0].RootNode;
    }

    static YamlNode? Get(YamlNode? node, params string[] keys)
    {
        foreach (var k in keys)
        {
            if (node is not YamlMappingNode map || !map.Children.TryGetValue(new YamlScalarNode(k), out node)) return null;
        }
        return node;
    }

    static string? Str(YamlNode? node, params string[] keys) => (Get(node, keys) as YamlScalarNode)?.Value;

    /// <summary>"VOLUME:PATH[:ro]" entries of a service, as (volume, path, options).</summary>
    static List<(string Volume, string Path, string Options)> Mounts(YamlNode service) =>
        Get(service, "volumes") is YamlSequenceNode list
            ? [.. list.Children.Select(c => ((YamlScalarNode)c).Value!.Split(':')).Select(p => (p[0], p[1], p.Length > 2 ? p[2] : ""))]
            : [];

    [Fact]
    public void Workers_mount_one_shared_tmpfs_at_dev_shm_and_nothing_else_does()
    {
        var compose = Compose();
        var worker = Get(compose, "services", "worker")!;
        var shm = Assert.Single(Mounts(worker), m => m.Path == SharedMemoryRing.Directory);
        Assert.Equal("", shm.Options);   // writable: the rings and segments are made there
        // A named volume (one mount on the host, shared by every worker container — however many --scale makes), not a bind of a host directory.
        var volume = Get(compose, "volumes", shm.Volume);
        Assert.True(volume is not null, $"the workers' {SharedMemoryRing.Directory} is mounted from '{shm.Volume}', which is not a volume of the compose file");
        Assert.Equal("local", Str(volume, "driver"));
        Assert.Equal("tmpfs", Str(volume, "driver_opts", "type"));
        Assert.Equal("tmpfs", Str(volume, "driver_opts", "device"));
        var options = (Str(volume, "driver_opts", "o") ?? "").Split(',');
        Assert.Contains("mode=1777", options);   // as /dev/shm: the worker's user (10001) creates its files there
        Assert.Contains(options, o => o.StartsWith("size=", StringComparison.Ordinal));
        foreach (var other in new[] { "coordinator", "certs", "prometheus" })
            Assert.DoesNotContain(Mounts(Get(compose, "services", other)!), m => m.Volume == shm.Volume);
    }
}
