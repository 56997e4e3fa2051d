namespace Dtrain.E2E.Support;

/// <summary>Unique names for the Docker resources of one test (networks, volumes, containers, compose projects).</summary>
public static class UniqueName
{
    /// <summary>"dtrain-e2e-PURPOSE-xxxxxxxx": lower case, valid as a compose project, network, volume and container name.</summary>
    public static string For(string purpose) => $"dtrain-e2e-{purpose}-{Guid.NewGuid().ToString("N")[..8]}";
}
