//! Property tests of the codec: encode -> decode is the identity for arbitrary packets of both
//! versions, `encoded_len` is exact, a stream of packets decodes the same wherever it is split,
//! and no input makes the decoder panic.

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use std::num::{NonZeroU16, NonZeroU32};
use ternmq_core::codec::*;
use ternmq_core::topic::{TopicFilter, TopicName};

fn mqtt_str() -> impl Strategy<Value = MqttStr> {
    "[a-zA-Z0-9 _/é€😀-]{0,12}".prop_map(|s| MqttStr::new(&s).unwrap())
}

fn opt<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    prop::option::of(s).boxed()
}

fn bin(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn topic() -> impl Strategy<Value = TopicName> {
    "[a-z0-9$ ]{1,6}(/[a-z0-9 ]{0,6}){0,3}".prop_map(|s| TopicName::new(&s).unwrap())
}

fn filter() -> impl Strategy<Value = TopicFilter> {
    (
        vec(prop_oneof!["[a-z0-9]{0,5}", Just("+".to_string())], 1..4),
        any::<bool>(),
        opt("[a-z]{1,4}"),
    )
        .prop_map(|(levels, hash, share)| {
            let mut f = levels.join("/");
            if hash {
                f.push_str("/#");
            }
            if f.is_empty() {
                f.push('a');
            }
            if let Some(g) = share {
                f = format!("$share/{g}/{f}");
            }
            TopicFilter::new(&f).unwrap()
        })
}

fn users() -> impl Strategy<Value = Vec<UserProperty>> {
    vec((mqtt_str(), mqtt_str()), 0..3)
}

fn nz16() -> impl Strategy<Value = NonZeroU16> {
    (1u16..).prop_map(|v| NonZeroU16::new(v).unwrap())
}

fn nz32() -> impl Strategy<Value = NonZeroU32> {
    (1u32..).prop_map(|v| NonZeroU32::new(v).unwrap())
}

fn sub_id() -> impl Strategy<Value = SubscriptionId> {
    (1u32..=MAX_SUBSCRIPTION_ID).prop_map(|v| NonZeroU32::new(v).unwrap())
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

fn payload_format() -> impl Strategy<Value = PayloadFormat> {
    prop_oneof![Just(PayloadFormat::Unspecified), Just(PayloadFormat::Utf8)]
}

fn code_for(kind: PacketType) -> impl Strategy<Value = ReasonCode> {
    let codes: Vec<ReasonCode> =
        (0..=255u8).filter_map(ReasonCode::from_u8).filter(|c| c.is_valid_for(kind)).collect();
    prop::sample::select(codes)
}

fn ack_props() -> impl Strategy<Value = AckProperties> {
    (opt(mqtt_str()), users()).prop_map(|(reason_string, user_properties)| AckProperties {
        reason_string,
        user_properties,
    })
}

fn auth_pair() -> impl Strategy<Value = (Option<MqttStr>, Option<Bytes>)> {
    (opt(mqtt_str()), opt(bin(8)))
        .prop_map(|(m, d)| if m.is_none() { (None, None) } else { (m, d) })
}

fn connect_props() -> impl Strategy<Value = ConnectProperties> {
    (
        (opt(any::<u32>()), opt(nz16()), opt(nz32()), opt(any::<u16>())),
        (opt(any::<bool>()), opt(any::<bool>()), users(), auth_pair()),
    )
        .prop_map(|((sei, rm, mps, tam), (rri, rpi, user_properties, (m, d)))| {
            ConnectProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                user_properties,
                authentication_method: m,
                authentication_data: d,
            }
        })
}

fn will_props() -> impl Strategy<Value = WillProperties> {
    (
        (opt(any::<u32>()), opt(payload_format()), opt(any::<u32>()), opt(mqtt_str())),
        (opt(topic()), opt(bin(8)), users()),
    )
        .prop_map(|((wdi, pfi, mei, ct), (rt, cd, user_properties))| WillProperties {
            will_delay_interval: wdi,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties,
        })
}

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = v.is_v5();
    let protocol = if v5 {
        Just(ProtocolVersion::V5).boxed()
    } else {
        prop_oneof![Just(ProtocolVersion::V3_1), Just(ProtocolVersion::V3_1_1)].boxed()
    };
    (
        (protocol, any::<bool>(), any::<u16>(), mqtt_str()),
        opt((topic(), bin(16), qos(), any::<bool>(), will_props())),
        (opt(mqtt_str()), opt(bin(8)), connect_props()),
    )
        .prop_map(
            move |(
                (protocol, clean_start, keep_alive, client_id),
                will,
                (username, password, props),
            )| {
                let will = will.map(|(topic, payload, qos, retain, properties)| Will {
                    topic,
                    payload,
                    qos,
                    retain,
                    properties: if v5 { properties } else { WillProperties::default() },
                });
                // 3.1.1 allows a password only with a user name ([MQTT-3.1.2-22]).
                let password = if v5 || username.is_some() { password } else { None };
                Packet::from(Connect {
                    protocol,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties: if v5 { props } else { ConnectProperties::default() },
                    bridge: false,
                })
            },
        )
}

fn connack_props() -> impl Strategy<Value = ConnAckProperties> {
    (
        (
            opt(any::<u32>()),
            opt(nz16()),
            opt(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
        ),
        (opt(any::<bool>()), opt(nz32()), opt(mqtt_str()), opt(any::<u16>()), opt(mqtt_str())),
        (users(), opt(any::<bool>()), opt(any::<bool>()), opt(any::<bool>()), opt(any::<u16>())),
        (opt(mqtt_str()), opt(mqtt_str()), auth_pair()),
    )
        .prop_map(
            |(
                (sei, rm, mq),
                (ra, mps, aci, tam, rs),
                (up, wsa, sia, ssa, ska),
                (ri, sr, (m, d)),
            )| {
                ConnAckProperties {
                    session_expiry_interval: sei,
                    receive_maximum: rm,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size: mps,
                    assigned_client_identifier: aci,
                    topic_alias_maximum: tam,
                    reason_string: rs,
                    user_properties: up,
                    wildcard_subscription_available: wsa,
                    subscription_identifiers_available: sia,
                    shared_subscription_available: ssa,
                    server_keep_alive: ska,
                    response_information: ri,
                    server_reference: sr,
                    authentication_method: m,
                    authentication_data: d,
                }
            },
        )
}

fn connack(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let code = if v.is_v5() {
        code_for(PacketType::ConnAck).boxed()
    } else {
        prop::sample::select(vec![
            ReasonCode::Success,
            ReasonCode::UnsupportedProtocolVersion,
            ReasonCode::ClientIdentifierNotValid,
            ReasonCode::ServerUnavailable,
            ReasonCode::BadUserNameOrPassword,
            ReasonCode::NotAuthorized,
        ])
        .boxed()
    };
    let v5 = v.is_v5();
    (any::<bool>(), code, connack_props())
        .prop_map(move |(sp, reason_code, props)| {
            Packet::ConnAck(ConnAck {
                session_present: sp && !reason_code.is_error(),
                reason_code,
                properties: if v5 { props } else { ConnAckProperties::default() },
            })
        })
        .boxed()
}

fn publish_props() -> impl Strategy<Value = PublishProperties> {
    (
        (opt(payload_format()), opt(any::<u32>()), opt(nz16()), opt(topic())),
        (opt(bin(8)), users(), vec(sub_id(), 0..3), opt(mqtt_str())),
    )
        .prop_map(|((pfi, mei, ta, rt), (cd, up, si, ct))| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
            subscription_identifiers: si,
            content_type: ct,
        })
}

fn publish(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = v.is_v5();
    (qos(), any::<bool>(), any::<bool>(), topic(), nz16(), publish_props(), bin(64)).prop_map(
        move |(qos, dup, retain, topic, id, props, payload)| {
            let qos0 = qos == QoS::AtMostOnce;
            Packet::Publish(Publish {
                dup: dup && !qos0,
                qos,
                retain,
                topic,
                packet_id: if qos0 { None } else { Some(id) },
                properties: if v5 { props } else { PublishProperties::default() },
                payload,
            })
        },
    )
}

fn pub_ack(v: ProtocolVersion, kind: PacketType) -> impl Strategy<Value = Packet> {
    let v5 = v.is_v5();
    (nz16(), code_for(kind), ack_props()).prop_map(move |(packet_id, code, props)| {
        let ack = if v5 {
            PubAck { packet_id, reason_code: code, properties: props }
        } else {
            PubAck::new(packet_id)
        };
        match kind {
            PacketType::PubAck => Packet::PubAck(ack),
            PacketType::PubRec => Packet::PubRec(ack),
            PacketType::PubRel => Packet::PubRel(ack),
            _ => Packet::PubComp(ack),
        }
    })
}

fn subscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = v.is_v5();
    let rh = prop_oneof![
        Just(RetainHandling::SendOnSubscribe),
        Just(RetainHandling::SendOnNewSubscribe),
        Just(RetainHandling::DoNotSend)
    ];
    let sub = (filter(), qos(), any::<bool>(), any::<bool>(), rh).prop_map(
        move |(filter, qos, nl, rap, rh)| {
            let options = if v5 {
                SubscriptionOptions {
                    qos,
                    no_local: nl && !filter.is_shared(),
                    retain_as_published: rap,
                    retain_handling: rh,
                }
            } else {
                SubscriptionOptions::qos(qos)
            };
            Subscription { filter, options }
        },
    );
    (nz16(), vec(sub, 1..4), opt(sub_id()), users()).prop_map(
        move |(packet_id, subscriptions, id, up)| {
            let properties = if v5 {
                SubscribeProperties { subscription_identifier: id, user_properties: up }
            } else {
                SubscribeProperties::default()
            };
            Packet::Subscribe(Subscribe { packet_id, subscriptions, properties })
        },
    )
}

fn suback(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = v.is_v5();
    let code = if v5 {
        code_for(PacketType::SubAck).boxed()
    } else {
        prop::sample::select(vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError,
        ])
        .boxed()
    };
    (nz16(), vec(code, 1..5), ack_props())
        .prop_map(move |(packet_id, reason_codes, p)| {
            let properties = if v5 { p } else { AckProperties::default() };
            Packet::SubAck(SubAck { packet_id, reason_codes, properties })
        })
        .boxed()
}

fn unsubscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = v.is_v5();
    (nz16(), vec(filter(), 1..4), users()).prop_map(move |(packet_id, filters, up)| {
        let properties =
            UnsubscribeProperties { user_properties: if v5 { up } else { Vec::new() } };
        Packet::Unsubscribe(Unsubscribe { packet_id, filters, properties })
    })
}

fn unsuback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = v.is_v5();
    (nz16(), vec(code_for(PacketType::UnsubAck), 1..4), ack_props()).prop_map(
        move |(packet_id, codes, p)| {
            let (reason_codes, properties) =
                if v5 { (codes, p) } else { (Vec::new(), AckProperties::default()) };
            Packet::UnsubAck(UnsubAck { packet_id, reason_codes, properties })
        },
    )
}

fn disconnect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = v.is_v5();
    (code_for(PacketType::Disconnect), opt(any::<u32>()), opt(mqtt_str()), users(), opt(mqtt_str()))
        .prop_map(move |(code, sei, rs, up, sr)| {
            if !v5 {
                return Packet::Disconnect(Disconnect::default());
            }
            Packet::Disconnect(Disconnect {
                reason_code: code,
                properties: DisconnectProperties {
                    session_expiry_interval: sei,
                    reason_string: rs,
                    user_properties: up,
                    server_reference: sr,
                },
            })
        })
}

fn auth() -> impl Strategy<Value = Packet> {
    (code_for(PacketType::Auth), auth_pair(), opt(mqtt_str()), users()).prop_map(
        |(reason_code, (m, d), rs, up)| {
            Packet::Auth(Auth {
                reason_code,
                properties: AuthProperties {
                    authentication_method: m,
                    authentication_data: d,
                    reason_string: rs,
                    user_properties: up,
                },
            })
        },
    )
}

fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        connect(v),
        connack(v),
        publish(v),
        publish(v),
        pub_ack(v, PacketType::PubAck),
        pub_ack(v, PacketType::PubRec),
        pub_ack(v, PacketType::PubRel),
        pub_ack(v, PacketType::PubComp),
        subscribe(v),
        suback(v),
        unsubscribe(v),
        unsuback(v),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(v),
    ];
    if v.is_v5() { prop_oneof![9 => common, 1 => auth()].boxed() } else { common.boxed() }
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(ProtocolVersion::V3_1_1), Just(ProtocolVersion::V5)]
}

fn version_and_packets(n: usize) -> impl Strategy<Value = (ProtocolVersion, Vec<Packet>)> {
    version().prop_flat_map(move |v| (Just(v), vec(packet(v), 1..=n)))
}

fn decode_all(decoder: &mut Decoder, buf: &mut BytesMut, out: &mut Vec<Packet>) {
    while let Some(p) = decoder.decode(buf).unwrap() {
        out.push(p);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn encode_then_decode_is_identity((v, packets) in version_and_packets(1)) {
        let p = &packets[0];
        let mut buf = BytesMut::new();
        let written = p.encode(v, &mut buf).unwrap();
        prop_assert_eq!(written, buf.len());
        prop_assert_eq!(p.encoded_len(v).unwrap(), buf.len());
        let mut decoder = Decoder::new(Some(v), MAX_PACKET_SIZE);
        let decoded = decoder.decode(&mut buf).unwrap();
        prop_assert_eq!(decoded.as_ref(), Some(p));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn stream_split_at_every_point_decodes_the_same((v, packets) in version_and_packets(4)) {
        let mut stream = BytesMut::new();
        for p in &packets {
            p.encode(v, &mut stream).unwrap();
        }
        let stream = stream.freeze();
        for split in 0..=stream.len() {
            let mut decoder = Decoder::new(Some(v), MAX_PACKET_SIZE);
            let mut buf = BytesMut::from(&stream[..split]);
            let mut out = Vec::new();
            decode_all(&mut decoder, &mut buf, &mut out);
            buf.extend_from_slice(&stream[split..]);
            decode_all(&mut decoder, &mut buf, &mut out);
            prop_assert_eq!(&out, &packets);
            prop_assert!(buf.is_empty());
        }
    }

    #[test]
    fn stream_fed_one_byte_at_a_time_decodes_the_same((v, packets) in version_and_packets(4)) {
        let mut stream = BytesMut::new();
        for p in &packets {
            p.encode(v, &mut stream).unwrap();
        }
        let mut decoder = Decoder::new(Some(v), MAX_PACKET_SIZE);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in stream.iter() {
            buf.extend_from_slice(&[*b]);
            decode_all(&mut decoder, &mut buf, &mut out);
        }
        prop_assert_eq!(out, packets);
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(
        bytes in vec(any::<u8>(), 0..256),
        v in prop::option::of(version()),
    ) {
        let mut decoder = Decoder::new(v, 1024);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decoder.decode(&mut buf) {}
    }

    #[test]
    fn decoder_never_panics_on_mutated_packets(
        (v, packets) in version_and_packets(2),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut stream = BytesMut::new();
        for p in &packets {
            p.encode(v, &mut stream).unwrap();
        }
        for (i, b) in flips {
            let i = i.index(stream.len());
            stream[i] = b;
        }
        let mut decoder = Decoder::new(Some(v), MAX_PACKET_SIZE);
        while let Ok(Some(p)) = decoder.decode(&mut stream) {
            // Whatever decodes must encode again.
            let mut out = BytesMut::new();
            prop_assert!(p.encode(v, &mut out).is_ok(), "{:?}", p);
        }
    }
}
