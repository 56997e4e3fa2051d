using Dtrain.Protos.Membership;
using Dtrain.Rpc;
using Grpc.Core;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>Register, heartbeat, leave: a thin adapter over <see cref="WorkerRegistry"/>, with admission and identity checks by <see cref="CoordinatorSecurity"/>.</summary>
public sealed class MembershipService(WorkerRegistry registry, CoordinatorOptions options, CoordinatorSecurity security, ILogger<MembershipService> log) : Membership.MembershipBase
{
    public override Task<RegisterReply> Register(RegisterRequest request, ServerCallContext context)
    {
        var admission = Refused(() => security.Admit(request.Address, request.JoinToken, request.Csr.Memory, PeerIdentity.Of(context)));
        // After admission: a caller that may not join learns nothing about this coordinator.
        if (request.Capabilities?.Protocol is not WireProtocol.Version)
        {
            var theirs = request.Capabilities?.Protocol ?? 0;
            var message = $"worker {request.Address} speaks dtrain wire protocol {theirs}{(theirs == 0 ? " (a build from before protocols were numbered)" : "")}"
                + $"{(request.Capabilities?.Version is { Length: > 0 } v ? $", build {v}" : "")}; this coordinator speaks {WireProtocol.Version}"
                + $" (build {typeof(MembershipService).Assembly.GetName().Version}): run the same dtrain build on the coordinator and every worker";
            log.LogWarning("registration from {Peer} refused: {Message}", context.Peer, message);
            throw new RpcException(new Status(StatusCode.FailedPrecondition, message));
        }
        var certificate = "";
        WorkerRecord w;
        try
        {
            w = registry.Register(ProtoMapper.FromProto(request, admission.Key), admission.Certify is null ? null : id =>
            {
                using var issued = admission.Certify(id);
                certificate = issued.ExportCertificatePem();
                return ClusterCertificates.Sha256(issued);
            });
        }
        catch (WorkerNameTakenException e)
        {
            log.LogWarning("registration from {Peer} ({Address}, proof: {Proof}) refused: {Message}", context.Peer, request.Address, admission.Proof, e.Message);
            throw new RpcException(new Status(StatusCode.AlreadyExists, e.Message));
        }
        catch (ClusterFullException e)
        {
            throw new RpcException(new Status(StatusCode.ResourceExhausted, e.Message));
        }
        log.LogInformation("worker {Id} admitted; proof: {Proof}{Issued}", w.Id, admission.Proof, certificate.Length == 0 ? "" : $"; issued its certificate sha256 {w.Certificate[..16]}…");
        return Task.FromResult(new RegisterReply { WorkerId = w.Id, HeartbeatIntervalMs = options.HeartbeatIntervalMs, Token = w.Token, Certificate = certificate });
    }

    public override Task<HeartbeatReply> Heartbeat(HeartbeatRequest request, ServerCallContext context)
    {
        Refused(() => security.CheckSpeaksFor(registry, request.WorkerId, request.Token, PeerIdentity.Of(context), "heartbeat"));
        var known = registry.Heartbeat(request.WorkerId, request.Token, PeerIdentity.Of(context)?.Sha256, out var cordoned);
        if (known) registry.Report(request.WorkerId, ProtoMapper.FromProto(request.Activity));
        return Task.FromResult(new HeartbeatReply { Known = known, Cordoned = cordoned });
    }

    public override Task<LeaveReply> Leave(LeaveRequest request, ServerCallContext context)
    {
        Refused(() => security.CheckSpeaksFor(registry, request.WorkerId, request.Token, PeerIdentity.Of(context), "leave"));
        registry.Leave(request.WorkerId, request.Token, string.IsNullOrWhiteSpace(request.Reason) ? "no reason given" : request.Reason, PeerIdentity.Of(context)?.Sha256);
        return Task.FromResult(new LeaveReply());
    }

    /// <summary>A refusal of <see cref="CoordinatorSecurity"/> as the call's status (its message unchanged).</summary>
    private static T Refused<T>(Func<T> check)
    {
        try
        {
            return check();
        }
        catch (RefusedException e)
        {
            throw e.ToRpc();
        }
    }

    private static void Refused(Action check) => Refused(() =>
    {
        check();
        return true;
    });
}
