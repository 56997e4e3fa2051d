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
}

public static class Roles
{
    public static readonly IReadOnlyList<string> Names = ["submitter", "viewer", "admin"];

    public static string Name(this Role role) => role switch
    {
        Role.Viewer => "viewer",
        Role.Submitter => "submitter",
        _ => "admin",
    };

    public static bool TryParse(string? name, out Role role)
    {
        switch (name)
        {
            case "viewer": role = Role.Viewer; return true;
            case "submitter": role = Role.Submitter; return true;
            case "admin": role = Role.Admin; return true;
            default: role = default; return false;
        }
    }
}
