using System.Reflection;
using System.Reflection.Emit;
using Dtrain.Cluster;
using Dtrain.Distributed;
using Dtrain.Server;
using Dtrain.Worker;

namespace Dtrain.Tests.Deploy;

/// <summary>
/// The path of a job from submit to a worker's step and back speaks the protocol's domain types
/// (<see cref="Dtrain.Cluster"/>); the generated gRPC/protobuf types (namespaces Dtrain.Protos.*) appear only in the
/// service adapters that map them. Checked by reflection over the compiled assemblies: every member's signature
/// (fields, properties, methods, constructors, events, base types), every compiler-generated type (lambdas, async
/// state machines: their fields are the methods' locals) and every type, field or method a method body refers to.
/// </summary>
public class ProtoBoundaryTests
{
    static readonly Assembly Coordinator = typeof(JobManager).Assembly;
    static readonly Assembly Worker = typeof(WorkerHost).Assembly;
    static readonly Assembly Shared = typeof(Assignment).Assembly;

    /// <summary>The adapters: the only types (with their nested ones) of the job path allowed to name a proto type, and why.</summary>
    static readonly Dictionary<string, string> Adapters = new()
    {
        // The coordinator
        ["Dtrain.Server.JobsService"] = "the Jobs gRPC service: maps the CLI's messages",
        ["Dtrain.Server.MembershipService"] = "the Membership gRPC service: maps the workers' register/heartbeat/leave",
        ["Dtrain.Server.ProtoMapper"] = "maps the coordinator's records to and from the Jobs/Membership messages",
        ["Dtrain.Server.JobStore"] = "keeps job records, events and ledger steps in their protobuf encoding (the store's format)",
        ["Dtrain.Server.CallRateLimits"] = "a gRPC interceptor: limits Submit and Register calls per client",
        // Not on the job path: the read side of a job's history (`dtrain metrics` reads it from the History call).
        ["Dtrain.Server.MetricsTable"] = "a table of the History call's step and evaluation events (`dtrain metrics`, the dashboard)",
        ["Dtrain.Server.MetricsRow"] = "a row of MetricsTable, with the event's validation metrics",
        ["Dtrain.Server.GrpcWorkerHandle"] = "a worker over gRPC (IWorkerHandle)",
        ["Dtrain.Server.WorkerClients"] = "the gRPC clients of the workers",
        ["Dtrain.Server.WorkerProtoMapping"] = "maps the protocol's domain types to and from WorkerControl's messages",
        // Not on the job path: `dtrain prepare --on-cluster`, a dataset prepared by idle workers (no job, no driver).
        ["Dtrain.Server.ClusterPrepare"] = "the on-cluster prepare: maps Jobs.Prepare and calls the workers' PrepareCount/PrepareEncode",
        // The worker
        ["Dtrain.Worker.WorkerControlService"] = "the WorkerControl gRPC service: maps the coordinator's calls to WorkerRuntime",
        ["Dtrain.Worker.WorkerProtocol"] = "maps WorkerControl's messages to and from the protocol's domain types",
        ["Dtrain.Worker.CoordinatorLink"] = "the worker's Membership gRPC client (register, heartbeat, leave)",
        ["Dtrain.Worker.GrpcPeerState"] = "takes a peer's state over gRPC (IPeerState)",
        ["Dtrain.Worker.WorkerPrepare"] = "serves PrepareCount/PrepareEncode of the on-cluster prepare (not a job's path)",
    };

    /// <summary>The types on the job path: the coordinator's server, the worker, the protocol's domain types and how parameters move.</summary>
    static IEnumerable<Type> JobPath() =>
        Coordinator.GetTypes().Where(t => t.Namespace?.StartsWith("Dtrain.Server", StringComparison.Ordinal) == true)
            .Concat(Worker.GetTypes().Where(t => t.Namespace?.StartsWith("Dtrain.Worker", StringComparison.Ordinal) == true))
            .Concat(Shared.GetTypes().Where(t => t.Namespace == "Dtrain.Cluster"))
            .Concat([typeof(ParameterTransfer)])
            .Where(t => !IsAdapter(t));

    static bool IsAdapter(Type t)
    {
        for (var outer = t; outer is not null; outer = outer.DeclaringType)
            if (Adapters.ContainsKey(outer.FullName!)) return true;
        return false;
    }

    static bool IsProto(Type? t)
    {
        if (t is null || t.IsGenericParameter) return false;
        if (t.HasElementType) return IsProto(t.GetElementType());
        if (t.IsGenericType && !t.IsGenericTypeDefinition) return IsProto(t.GetGenericTypeDefinition()) || t.GetGenericArguments().Any(IsProto);
        for (var outer = t; outer is not null; outer = outer.DeclaringType)
            if (outer.Namespace?.StartsWith("Dtrain.Protos", StringComparison.Ordinal) == true) return true;
        return false;
    }

    const BindingFlags Declared = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;

    /// <summary>What <paramref name="t"/> names of a proto type, one line each ("Type.Member: ProtoType").</summary>
    static IEnumerable<string> ProtoMentions(Type t)
    {
        IEnumerable<string> Named(string where, params Type?[] types) => types.Where(IsProto).Select(p => $"{t.FullName}.{where}: {p}");

        foreach (var x in Named("(base)", [t.BaseType, .. t.GetInterfaces()])) yield return x;
        foreach (var f in t.GetFields(Declared))
            foreach (var x in Named(f.Name, f.FieldType)) yield return x;
        foreach (var p in t.GetProperties(Declared))
            foreach (var x in Named(p.Name, p.PropertyType)) yield return x;
        foreach (var e in t.GetEvents(Declared))
            foreach (var x in Named(e.Name, e.EventHandlerType)) yield return x;
        foreach (var m in t.GetMethods(Declared).Cast<MethodBase>().Concat(t.GetConstructors(Declared)))
        {
            var returns = m is MethodInfo mi ? mi.ReturnType : null;
            foreach (var x in Named(m.Name, [returns, .. m.GetParameters().Select(p => p.ParameterType)])) yield return x;
            foreach (var used in BodyReferences(m))
                foreach (var x in Named($"{m.Name} (body)", used)) yield return x;
        }
    }

    static readonly Dictionary<short, OpCode> OpCodesByValue =
        typeof(OpCodes).GetFields(BindingFlags.Public | BindingFlags.Static).Select(f => (OpCode)f.GetValue(null)!).ToDictionary(o => o.Value);

    /// <summary>Every type a method's body refers to: the types, fields and methods of its instructions (and their declaring types).</summary>
    static IEnumerable<Type?> BodyReferences(MethodBase m)
    {
        var il = m.GetMethodBody()?.GetILAsByteArray();
        if (il is null) yield break;
        var typeArgs = m.DeclaringType is { IsGenericType: true } d ? d.GetGenericArguments() : null;
        var methodArgs = m.IsGenericMethod ? m.GetGenericArguments() : null;
        var i = 0;
        while (i < il.Length)
        {
            short value = il[i++];
            if (value == 0xFE) value = (short)(0xFE00 | il[i++]);
            var op = OpCodesByValue[value];
            var size = op.OperandType switch
            {
                OperandType.InlineNone => 0,
                OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
                OperandType.InlineVar => 2,
                OperandType.InlineI8 or OperandType.InlineR => 8,
                OperandType.InlineSwitch => 4 + 4 * BitConverter.ToInt32(il, i),
                _ => 4,
            };
            if (op.OperandType is OperandType.InlineType or OperandType.InlineField or OperandType.InlineMethod or OperandType.InlineTok)
            {
                var member = m.Module.ResolveMember(BitConverter.ToInt32(il, i), typeArgs, methodArgs);
                switch (member)
                {
                    case Type type:
                        yield return type;
                        break;
                    case FieldInfo field:
                        yield return field.DeclaringType;
                        yield return field.FieldType;
                        break;
                    case MethodBase method:
                        yield return method.DeclaringType;
                        if (method is MethodInfo info)
                        {
                            yield return info.ReturnType;
                            if (info.IsGenericMethod) foreach (var a in info.GetGenericArguments()) yield return a;
                        }
                        foreach (var p in method.GetParameters()) yield return p.ParameterType;
                        break;
                }
            }
            i += size;
        }
    }

    [Fact]
    public void No_type_on_the_job_path_outside_the_service_adapters_names_a_proto_type()
    {
        var found = JobPath().SelectMany(ProtoMentions).Distinct().Order(StringComparer.Ordinal).ToList();
        Assert.True(found.Count == 0, $"proto types on the job path outside the adapters ({found.Count}; map them in an adapter, or list a new adapter with its reason):\n{string.Join("\n", found.Take(60))}");
    }

    [Fact]
    public void The_check_sees_what_the_adapters_name()
    {
        // The same check over the adapters finds their proto types: it would see one on the job path too.
        Assert.Contains(ProtoMentions(typeof(GrpcWorkerHandle)), m => m.Contains("Dtrain.Protos.Worker", StringComparison.Ordinal));
        Assert.Contains(ProtoMentions(typeof(WorkerProtocol)), m => m.Contains("Dtrain.Protos.Worker.AssignRequest", StringComparison.Ordinal));
        Assert.All(Adapters.Keys, name => Assert.True((Coordinator.GetType(name) ?? Worker.GetType(name)) is not null, $"adapter {name} does not exist: remove it from the list"));
    }
}
