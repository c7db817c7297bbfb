// The gRPC bench's server: one unary method that answers with the message it got.
// Prints {"port": N} on stdout once listening.
import * as grpc from '@grpc/grpc-js'

const bytes = (b: Buffer): Buffer => b
export const ECHO: grpc.MethodDefinition<Buffer, Buffer> = { path: '/bench.Echo/Unary', requestStream: false, responseStream: false, requestSerialize: bytes, requestDeserialize: bytes, responseSerialize: bytes, responseDeserialize: bytes }

const server = new grpc.Server()
server.addService({ Unary: ECHO }, { Unary: (call: grpc.ServerUnaryCall<Buffer, Buffer>, done: grpc.sendUnaryData<Buffer>) => { done(null, call.request) } })
server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err !== null) throw err
  console.log(JSON.stringify({ port }))
})
process.once('SIGTERM', () => server.forceShutdown())
