using System.Runtime.InteropServices;
using Dtrain.Cluster;
using Dtrain.Server;
using Dtrain.Worker;
using Google.Protobuf;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// A parameter on the wire: the coordinator's and the worker's mappings of <see cref="ParameterTensor"/> write the same
/// NamedTensor message as before the domain type (name, shape, float32 little-endian bytes, optimizer state), and read
/// it back with every byte.
/// </summary>
public class ParameterTensorWireTests
{
    static readonly float[] Values = [1.5f, -2.25f, float.Epsilon, 3e38f, 0f, -0f];

    static Protos.Worker.NamedTensor AsBefore()
    {
        var t = new Protos.Worker.NamedTensor
        {
            Name = "layers.0.weight_ih",
            Data = ByteString.CopyFrom(MemoryMarshal.AsBytes(Values.AsSpan())),
            OptimizerState = ByteString.CopyFrom([7, 0, 255, 1]),
        };
        t.Shape.AddRange([2, 3]);
        return t;
    }

    static ParameterTensor Tensor() => new("layers.0.weight_ih", [2, 3], MemoryMarshal.AsBytes(Values.AsSpan()).ToArray(), new byte[] { 7, 0, 255, 1 });

    [Fact]
    public void Both_sides_send_the_message_byte_for_byte_as_before()
    {
        var before = AsBefore().ToByteArray();
        Assert.Equal(before, Tensor().ToProto().ToByteArray());
        Assert.Equal(before, WorkerProtocol.ToProto(Tensor()).ToByteArray());
    }

    [Fact]
    public void Both_sides_read_every_field_of_a_received_message()
    {
        var received = Protos.Worker.NamedTensor.Parser.ParseFrom(AsBefore().ToByteArray());
        foreach (var t in new[] { WorkerProtoMapping.FromProto(received), WorkerProtocol.FromProto(received) })
        {
            Assert.Equal("layers.0.weight_ih", t.Name);
            Assert.Equal([2L, 3L], t.Shape);
            Assert.Equal(Values, t.Floats.ToArray());
            Assert.Equal(new byte[] { 7, 0, 255, 1 }, t.OptimizerState.ToArray());
        }
    }

    [Fact]
    public void A_message_with_a_partial_float_keeps_its_bytes_for_the_loader_to_refuse()
    {
        // ParameterTransfer.Load refuses "parameter NAME: 5 bytes for N float32 values": the mapping must not drop the odd byte.
        var odd = AsBefore();
        odd.Data = ByteString.CopyFrom([1, 2, 3, 4, 5]);
        Assert.Equal(5, WorkerProtocol.FromProto(odd).Values.Length);
        Assert.Equal(5, WorkerProtoMapping.FromProto(odd).Values.Length);
    }
}
