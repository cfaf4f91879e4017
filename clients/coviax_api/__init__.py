"""Generated gRPC stubs of the COViaX API (proto/coviax/v1/coviax.proto).

Do not edit the ``*_pb2*.py`` files: change the .proto and run ``make proto``.
Usage::

    from coviax_api.coviax.v1 import coviax_pb2 as pb, coviax_pb2_grpc as pb_grpc
"""
