namespace Dtrain.Server.Auth;

/// <summary>What a token may do on the Jobs API (docs/cluster.md#security-tokens-and-roles).</summary>
public enum Role
{
    /// <summary>Reads every job and the workers (list, status, watch, download, workers); cannot submit or cancel.</summary>
    Viewer,
    /// <summary>Submits jobs and sees, watches, cancels and downloads only its own (same token name).</summary>
    Submitter,
    /// <summary>Everything: every job, and the workers.</summary>
    Admin,
    /// <summary>Only scrapes Prometheus /metrics and /metrics/targets (a Prometheus server's token); no job, worker or dashboard page.</summary>
    Metrics,
}

public static class Roles
{
    public static readonly IReadOnlyList<string> Names = ["submitter", "viewer", "admin", "metrics"];

    public static string Name(this Role role) => role switch
    {
        Role.Viewer => "viewer",
        Role.Submitter => "submitter",
        Role.Metrics => "metrics",
        _ => "admin",
    };

    public static bool TryParse(string? name, out Role role)
    {
        switch (name)
        {
            case "viewer": role = Role.Viewer; return true;
            case "submitter": role = Role.Submitter; return true;
            case "admin": role = Role.Admin; return true;
            case "metrics": role = Role.Metrics; return true;
            default: role = default; return false;
        }
    }
}
