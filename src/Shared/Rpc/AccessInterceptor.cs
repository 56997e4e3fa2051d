using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Dtrain.Rpc;

/// <summary>
/// Which roles may call which gRPC service or method of a TLS server. A method without a rule is refused (default
/// deny); an anonymous rule admits callers without a certificate (health checks; a worker's Register, which brings
/// its own proof).
/// </summary>
public sealed class AccessPolicy
{
    private readonly Dictionary<string, (string[] Roles, string? Hint)> rules = new(StringComparer.Ordinal);

    /// <summary>Admits <paramref name="roles"/> to a service ("dtrain.jobs.v1.Jobs") or one method ("dtrain.membership.v1.Membership/Heartbeat").</summary>
    public AccessPolicy Allow(string serviceOrMethod, string[] roles, string? hint = null)
    {
        rules["/" + serviceOrMethod.Trim('/')] = (roles, hint);
        return this;
    }

    /// <summary>Admits anyone (a certificate, if presented, is still identified).</summary>
    public AccessPolicy AllowAnonymous(string serviceOrMethod) => Allow(serviceOrMethod, []);

    /// <summary>The rule of a method ("/package.Service/Method"): the method's own, else its service's; null = refused.</summary>
    public (string[] Roles, string? Hint)? RuleFor(string method)
    {
        if (rules.TryGetValue(method, out var rule)) return rule;
        var slash = method.LastIndexOf('/');
        return slash > 0 && rules.TryGetValue(method[..slash], out rule) ? rule : null;
    }

    /// <summary>The coordinator's rules: the CLI's API for clients, membership for workers (Register brings its own proof), health for anyone.</summary>
    public static AccessPolicy Coordinator() => new AccessPolicy()
        .AllowAnonymous(Grpc.Health.V1.Health.Descriptor.FullName)
        .Allow(Protos.Jobs.Jobs.Descriptor.FullName, [ClusterRoles.Client],
            " (the CLI takes it from --tls-dir DIR or DTRAIN_TLS_DIR, e.g. DIR/client of `dtrain certs init`)")
        .AllowAnonymous($"{Protos.Membership.Membership.Descriptor.FullName}/Register")
        .Allow(Protos.Membership.Membership.Descriptor.FullName, [ClusterRoles.Worker]);

    /// <summary>A worker's rules: control only from the coordinator, ring and pipeline streams only from workers (which neighbour: checked by the services), health for anyone.</summary>
    public static AccessPolicy Worker() => new AccessPolicy()
        .AllowAnonymous(Grpc.Health.V1.Health.Descriptor.FullName)
        .Allow(Protos.Worker.WorkerControl.Descriptor.FullName, [ClusterRoles.Coordinator])
        // An elastic job's newcomers take a peer's state worker to worker (the service checks the caller is a member of the job).
        .Allow($"{Protos.Worker.WorkerControl.Descriptor.FullName}/GetState", [ClusterRoles.Coordinator, ClusterRoles.Worker])
        .Allow(Protos.Collective.Collective.Descriptor.FullName, [ClusterRoles.Worker])
        .Allow(Protos.Pipeline.StageLink.Descriptor.FullName, [ClusterRoles.Worker]);
}

/// <summary>
/// On a TLS server, runs first for every call: identifies the caller from its client certificate (checked against the
/// cluster CA, never from a header) and admits it by <see cref="AccessPolicy"/>; services read the identity with
/// <see cref="PeerIdentity.Of"/>. Refusals: no or an invalid certificate → Unauthenticated; the wrong role →
/// PermissionDenied; both logged with the caller's address.
/// </summary>
public sealed class AccessInterceptor(ClusterTls tls, AccessPolicy policy, ILogger<AccessInterceptor> log) : AdmissionInterceptor
{

    protected override void Admit(ServerCallContext context)
    {
        var http = context.GetHttpContext();
        var presented = http.Connection.ClientCertificate;
        string? error = null;
        var identity = presented is null ? null : tls.Identify(presented, asServer: false, out error);
        if (identity is not null) context.UserState[PeerIdentity.ContextKey] = identity;

        var method = context.Method;
        var rule = policy.RuleFor(method);
        if (rule is { Roles.Length: 0 }) return;
        var who = identity?.ToString() ?? (presented is null ? "a caller without a certificate" : $"certificate \"{presented.Subject}\"");
        if (rule is null) throw Refuse(StatusCode.PermissionDenied, $"{method} is not served to anyone over this connection", who, http);
        var (roles, hint) = rule.Value;
        if (presented is null)
            throw Refuse(StatusCode.Unauthenticated, $"{method} needs a client certificate signed by the cluster CA (role {string.Join(" or ", roles)}); none was presented{hint}", who, http);
        if (identity is null)
            throw Refuse(StatusCode.Unauthenticated, $"{method} refused: {error}", who, http);
        if (!roles.Contains(identity.Role))
            throw Refuse(StatusCode.PermissionDenied, $"{identity} may not call {method}: only {string.Join(" or ", roles.Select(r => "the " + r))} may", who, http);
    }

    private RpcException Refuse(StatusCode code, string message, string who, HttpContext http)
    {
        log.LogWarning("refused {Method} from {Who} at {Remote}: {Code}: {Message}", http.Request.Path, who, $"{http.Connection.RemoteIpAddress}:{http.Connection.RemotePort}", code, message);
        return new RpcException(new Status(code, message));
    }
}

/// <summary>What a TLS server presents and how it admits callers.</summary>
public sealed record ServerSecurity(ClusterTls Tls, AccessPolicy Policy)
{
    /// <summary>The certificate presented to a new connection (a worker switches to the one the coordinator issued it).</summary>
    public X509Certificate2 SelectCertificate() =>
        Tls.ServerCertificate ?? throw new InvalidOperationException("this TLS server has no certificate to present");
}
